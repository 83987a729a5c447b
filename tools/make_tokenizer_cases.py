"""Extra tokenizer fixtures for the Swift MSTokenizer tests, from HF `tokenizers`.

    .venv/bin/python tools/make_tokenizer_cases.py

Writes, beside the fixtures made by msgen_tools.make_fixtures (which it only reads):

  Tests/Fixtures/tokenizer/extra_cases.json
      [{"text", "ids"}] for tokenizer.json: canonically equivalent pairs, characters
      newer than HF's regex tables, whitespace runs, and seeded random strings of
      arbitrary Unicode scalars (with "<|endoftext|>" spliced in now and then).
  Tests/Fixtures/tokenizer/variants.json
      [{"name", "tokenizer_json", "cases"}]: small tokenizers trained here that exercise
      what the bundled one does not: add_prefix_space, added tokens with lstrip / rstrip /
      single_word / normalized flags, merges written as "a b" strings, use_regex=false,
      ignore_merges, and byte symbols missing from the vocabulary (with and without an
      unk_token). Each case also records HF's decode, to check the decoder quirks.

Deterministic: the same tokenizers version gives the same bytes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "Tests" / "Fixtures" / "tokenizer"
EOS = "<|endoftext|>"

WHITESPACE = ["\t", "\n", "\x0b", "\x0c", "\r", " ", "\x85", "\xa0", "\u1680", "\u2000", "\u2005", "\u200a",
              "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"]
NOT_WHITESPACE = ["\u180e", "\u200b", "\ufeff", "\x1c", "\x1f"]  # look blank, are not \s
# Assigned in Unicode 17.0: Swift 6.3 calls them letters / numbers, HF's Oniguruma
# (Unicode 16.0) does not know them.
UNICODE_17 = ["\u088f", "\u0c5c", "\ua7ce", "\U00010940", "\U00011db0", "\U00011de0", "\U00016ff4"]

HANDWRITTEN = [
    # canonically equivalent, different scalars, different ids
    "\u00e9", "e\u0301", "caf\u00e9 cafe\u0301", "\u00c5ngstr\u00f6m \u212bngstro\u0308m", "\u1e9b\u0323 \u017f\u0323\u0307",
    "\ufb01 fi", "\u00bd 1\u20442", "\uac00 \u1100\u1161",
    # newer than the regex tables
    "a" + "".join(UNICODE_17) + "b", " " + UNICODE_17[0] + "x", "1" + UNICODE_17[5] + "2", UNICODE_17[1] + " z",
    # whitespace, each kind before a word and in runs
    *[f"a{w}b" for w in WHITESPACE + NOT_WHITESPACE],
    *[f"x{w * 3}y" for w in WHITESPACE],
    " \u3000 a", "\u3000\u3000", "\n \n", "  \t  x", "a \n", "a\n ", " " * 300, "\n" * 50 + "x",
    # the pattern's corners
    "'s's's", "''s", " 's", "'S", "'ll've're", "'", "x'", "a'b", "don't'", "' ", "1'2",
    " 123 4", "a1b2", "\u0661\u0662\u0663", "\u2460\u2461", "\u216b", " \u00b2", "1.5e10", "-7",
    "_underscore_", "a_b", "++--", " !", "  !", "\t!",
    "\x00\x01\x02", "\x7f\x80\x9f", "\U0010ffff\U000e0001", "\ue000 private",
    # emoji and joiners
    "\U0001f469\u200d\U0001f4bb", "\u2764\ufe0f\u200d\U0001f525", "\U0001f44b\U0001f3ff", "#\ufe0f\u20e3",
    "\U0001f1fa\U0001f1f3\U0001f1ff", "\u200d", "a\u200db", "\u200c\u200d",
    # special token in odd places
    "<|endoftext|>\n", "\n<|endoftext|>", " <|endoftext|>", "x<|endoftext|>'s", "<|endoftext|><|endoftext", "<|<|endoftext|>|>",
]


def random_text(rng: random.Random, special: bool) -> str:
    def any_scalar():
        while True:
            c = rng.randrange(0x110000)
            if not 0xD800 <= c <= 0xDFFF:
                return chr(c)

    pools = [
        (8, lambda: chr(rng.randrange(0x20, 0x7F))),
        (4, lambda: rng.choice(WHITESPACE + NOT_WHITESPACE) * rng.choice([1, 1, 2, 3])),
        (3, lambda: chr(rng.randrange(0x300, 0x370))),  # combining marks
        (2, lambda: chr(rng.randrange(0x4E00, 0x9FFF))),  # CJK
        (2, lambda: chr(rng.randrange(0x1F300, 0x1FAFF))),  # emoji
        (1, lambda: rng.choice(["\u200d", "\ufe0f", "\u200c", "\u20e3"])),
        (1, lambda: chr(rng.randrange(0, 0x20))),  # controls
        (1, lambda: "\ufffd"),
        (1, lambda: rng.choice(["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'"])),
        (1, lambda: rng.choice(UNICODE_17)),
        (1, lambda: chr(rng.randrange(0x80, 0x800))),
        (3, any_scalar),
    ]
    weights = [w for w, _ in pools]
    parts = []
    for _ in range(rng.randrange(0, 40)):
        parts.append(rng.choices(pools, weights)[0][1]())
        if special and rng.random() < 0.02:
            parts.append(EOS)
    return "".join(parts)


def case(tok: Tokenizer, text: str) -> dict:
    ids = tok.encode(text).ids
    return {"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)}


# -----------------------------------------------------------------------------
# variants

def train_small(corpus: list[str], add_prefix_space: bool, use_regex: bool = True, vocab_size: int = 400) -> dict:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=use_regex)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    return json.loads(tok.to_str())


def with_added_tokens(spec: dict) -> dict:
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.add_special_tokens([AddedToken("<pad>", lstrip=True, rstrip=True), AddedToken("<s>", rstrip=True)])
    tok.add_tokens([
        AddedToken("[MASK]", single_word=True),
        AddedToken("é!", normalized=False),  # not byte-level characters: decodes to U+FFFD "!"
        AddedToken("the", single_word=True, lstrip=True),  # already a vocabulary token
        AddedToken("<x>", lstrip=True, rstrip=True, normalized=True),
        AddedToken("<xy>", normalized=False),
        AddedToken("\u00e9t\u00e9", normalized=False),
    ])
    return json.loads(tok.to_str())


def without_byte(spec: dict, char: str, unk: str | None) -> dict:
    """Drop a byte symbol and everything built from it (HF refuses merges whose parts are
    missing), optionally adding an unk token in its place."""
    spec = json.loads(json.dumps(spec))
    model = spec["model"]
    model["vocab"] = {t: i for t, i in model["vocab"].items() if char not in t}
    model["merges"] = [m for m in model["merges"] if char not in m[0] and char not in m[1]]
    if unk:
        model["vocab"][unk] = max(model["vocab"].values()) + 1
        model["unk_token"] = unk
        model["fuse_unk"] = True
    return spec


def variants(corpus: list[str], texts: list[str]) -> list[dict]:
    base = train_small(corpus, add_prefix_space=False)
    flagged = with_added_tokens(train_small(corpus, add_prefix_space=True))
    flagged["model"]["merges"] = [" ".join(m) for m in flagged["model"]["merges"]]  # the older spelling
    no_regex = train_small(corpus, add_prefix_space=False, use_regex=False)
    no_regex["model"]["ignore_merges"] = True
    specs = [
        ("prefix-space, added-token flags, string merges", flagged),
        ("no regex, ignore_merges", no_regex),
        ("byte 0xF0 missing, fused unk", without_byte(base, "ð", "<unk>")),
        ("byte 0xF0 missing, no unk", without_byte(base, "ð", None)),
    ]
    extra = [
        "<pad>", " <pad> ", "a<pad>b", "a  <pad>  b", "<pad><pad>", "<s>  x", "x <s>", "[MASK]", "a [MASK] b",
        "a[MASK] b", "[MASK]s", "the [MASK]", "é!", "xé!y", "the them other the", " the", "\tthe\t",
        "<x><xy><x>", "a <x>  <xy> b", "<x> <x>", "été ete\u0301 été", "<|endoftext|>x", "x<|endoftext|> y",
        "😀 🙂 emoji need byte F0", "ðð ð", "",
        # single_word's \w also stops at Unicode 16.0 in HF (Rust regex tables)
        "the" + UNICODE_17[4], "[MASK]" + UNICODE_17[0], UNICODE_17[2] + "[MASK]", "a [MASK]" + UNICODE_17[5],
    ]
    out = []
    for name, spec in specs:
        text = json.dumps(spec, ensure_ascii=False)
        tok = Tokenizer.from_str(text)
        out.append({"name": name, "tokenizer_json": text, "cases": [case(tok, t) for t in extra + texts]})
    return out


def dump_cases(path: Path, cases: list):
    with open(path, "w", encoding="utf-8") as f:
        f.write("[\n" + ",\n".join(json.dumps(c, ensure_ascii=False) for c in cases) + "\n]\n")


def main():
    tok = Tokenizer.from_file(str(FIXTURES / "tokenizer.json"))
    rng = random.Random(20250101)
    texts = list(HANDWRITTEN) + [random_text(rng, special=True) for _ in range(400)]
    cases = [case(tok, t) for t in texts]
    dump_cases(FIXTURES / "extra_cases.json", cases)

    real = [c["text"] for c in json.loads((FIXTURES / "cases.json").read_text(encoding="utf-8"))]
    vrng = random.Random(7)
    vtexts = HANDWRITTEN[:12] + real[80:110] + [random_text(vrng, special=True) for _ in range(60)]
    vs = variants(real, vtexts)
    with open(FIXTURES / "variants.json", "w", encoding="utf-8") as f:
        f.write("[\n" + ",\n".join(json.dumps(v, ensure_ascii=False) for v in vs) + "\n]\n")
    print(f"{FIXTURES}: extra_cases.json ({len(cases)} cases), variants.json "
          f"({len(vs)} tokenizers, {sum(len(v['cases']) for v in vs)} cases)")


if __name__ == "__main__":
    main()
