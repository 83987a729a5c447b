"""Regenerate every fixture the Swift tests read:

    python -m msgen_tools.make_fixtures          (or: msgen-fixtures)

Tests/Fixtures/golden/<name>/      tiny random models, one per config to cover:
    config.json, model.safetensors (f32), tokenizer.json   a §4 checkpoint dir
    golden.safetensors   decoders: input_ids int32 [T], logits float32 [T, V]
                         encoders: input_ids int32 [n] (no [CLS]), logits and
                                   probs float32 [labels]
                         metadata: {"text": the source text}
Tests/Fixtures/tokenizer/
    tokenizer.json       the BPE-4096 of the bundled model (KJV train split)
    cases.json           [{"text", "ids"}] as HF `tokenizers` encodes them
    special_cases.json   same, for text that contains "<|endoftext|>" (HF matches
                         special tokens inside text; the runtime may choose not to)

Golden logits are computed in float64 from the float32 weights as stored, so they
are the exact answer for those weights up to one f32 rounding; everything is seeded
and reruns give the same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import corpus
from . import tokenizer as tk
from .export import export_checkpoint, load_checkpoint
from .models import ModelConfig, build_model, layer_scales_from_alpha
from .reference_loops import (bottom_up_forward_loop, cst_forward_loop, mstrans_forward_loop, top_down_forward_loop,
                              transformer_forward_loop)

LOOPS = {"cst-decoder": cst_forward_loop, "transformer-decoder": transformer_forward_loop,
         "ms-trans-encoder": mstrans_forward_loop, "top-down-decoder": top_down_forward_loop,
         "bottom-up-decoder": bottom_up_forward_loop}

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "Tests" / "Fixtures"
TINY_VOCAB = 300

# name -> (config overrides, sequence length). Together they cover alpha 1/2/3,
# shared and separate global projections, tied and untied embeddings, gelu and
# gelu_tanh, partial last slices, exactly-full context and past-the-context.
CST = dict(architecture="cst-decoder", n_layers=2, eos_token_id=0)
TD = dict(architecture="top-down-decoder", eos_token_id=0)
BU = dict(architecture="bottom-up-decoder", eos_token_id=0)
DECODERS = {
    "cst_a1_shared_tied_gelu": (dict(CST, d_model=16, n_heads=2, d_ff=32, slice_length=4, extension_ratio=1,
                                     max_slices=8, tie_embeddings=True, activation="gelu"), 27),
    "cst_a2_separate_untied_gelutanh": (dict(CST, d_model=32, n_heads=4, d_ff=64, slice_length=4,
                                             extension_ratio=2, max_slices=8, shared_local_global=False,
                                             activation="gelu_tanh"), 27),
    "cst_a3_shared_untied_gelutanh_full": (dict(CST, d_model=24, n_heads=3, d_ff=48, slice_length=4,
                                                extension_ratio=3, max_slices=8, activation="gelu_tanh"), 32),
    "cst_a3_separate_tied_gelu_L5": (dict(CST, d_model=16, n_heads=4, d_ff=32, slice_length=5, extension_ratio=3,
                                          max_slices=6, shared_local_global=False, tie_embeddings=True,
                                          norm_eps=1e-6), 23),
    # T = 40 > N = 16: positions >= 16 follow the §1 past-the-context rule
    "cst_a2_shared_untied_past_context": (dict(CST, d_model=16, n_heads=2, d_ff=32, slice_length=4,
                                               extension_ratio=2, max_slices=4), 40),
    "transformer_untied_gelutanh": (dict(architecture="transformer-decoder", n_layers=2, d_model=24, n_heads=4,
                                         d_ff=48, max_positions=32, eos_token_id=0, activation="gelu_tanh"), 27),
    # §8 multi-scale decoders: k = 2, 3, 4 and S = 2, 3; T = N (full context), T on a
    # coarse block boundary and T inside one; the runtime tests check every prefix too
    "topdown_k2_s3_untied_gelu": (dict(TD, d_model=16, n_heads=2, d_ff=32, pool_factor=2, scales=3,
                                       layers_per_scale=[1, 1, 2], max_positions=16), 16),
    "topdown_k3_s2_tied_gelutanh": (dict(TD, d_model=24, n_heads=3, d_ff=48, pool_factor=3, scales=2,
                                         layers_per_scale=[2, 1], max_positions=18, tie_embeddings=True,
                                         activation="gelu_tanh"), 13),
    "bottomup_k2_s3_untied_gelutanh": (dict(BU, d_model=16, n_heads=2, d_ff=32, pool_factor=2, scales=3,
                                            layers_per_scale=[1, 1, 1], agg_layers=1, max_positions=16,
                                            activation="gelu_tanh"), 16),
    "bottomup_k4_s2_tied_gelu_agg2": (dict(BU, d_model=24, n_heads=4, d_ff=48, pool_factor=4, scales=2,
                                           layers_per_scale=[1, 2], agg_layers=2, max_positions=32,
                                           tie_embeddings=True, norm_eps=1e-6), 12),
}
MINIMAL_CONFIG = {"cst_a2_shared_untied_past_context"}
ENC = dict(architecture="ms-trans-encoder", labels=["negative", "neutral", "positive"])
ENCODERS = {
    "mstrans_fixed_scales": (dict(ENC, n_layers=2, d_model=16, n_heads=4, d_ff=24, max_length=48,
                                  layer_scales=[[1, 3, 3, 5], [1, 3, 7, 9]]),
                             "The LORD is my shepherd; I shall not want."),
    # scales from the alpha rule with "N/k" entries; the text is 28 tokens, so
    # n = 29 with [CLS] and N/8 -> 3, N/4 -> 7, N/2 -> 14 -> 13
    "mstrans_nk_scales": (dict(ENC, n_layers=3, d_model=20, n_heads=5, d_ff=16, max_length=64,
                               layer_scales=layer_scales_from_alpha(0.5, [1, 3, "N/8", "N/4", "N/2"], 5, 3)),
                          "And God saw the light, that it was good."),
}


def seeded(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(name.encode()))


@torch.no_grad()
def randomize_(model, gen):
    """Weights large enough that attention is far from uniform and logits are
    far from flat; norms and biases random too so a wrong term shows up."""
    for name, p in model.named_parameters():
        if "norm" in name and name.endswith("weight"):
            p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
        elif name.endswith("bias"):
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        elif name.startswith(("embed", "pos")):
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))


def tiny_tokenizer(train_txt: Path):
    """~300-token BPE from the first 2,000 verses, so vocab_size stays tiny."""
    return tk.train_bpe(tk.lines_of(str(train_txt))[:2000], TINY_VOCAB)


@torch.no_grad()
def checked_logits(ckpt_dir: Path, ids):
    """Logits in float64 from the checkpoint *as written* (f32 weights), checked
    against the slow reference loop so a fixture can never encode a model bug."""
    model, cfg = load_checkpoint(ckpt_dir, dtype=torch.float64)
    fast = model(torch.tensor([ids]))[0]
    slow = LOOPS[cfg.architecture](model, ids)
    err = (fast - slow).abs().max().item()
    assert err < 1e-9, f"{ckpt_dir.name}: batched vs loop differ by {err}"
    # store the loop's answer: single-threaded, so the bytes are identical every run
    return slow.float()


def write_golden(path: Path, tensors: dict, text: str):
    # a single metadata key: safetensors writes metadata in hash-map order, so two
    # keys would make the file bytes differ from run to run
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"text": text})


def make_decoder(name, overrides, T, tok, text, out_root: Path):
    cfg = ModelConfig.from_dict(dict(overrides, vocab_size=tok.get_vocab_size()))
    model = build_model(cfg)
    randomize_(model, seeded(name))
    ids = tok.encode(text).ids[:T]
    assert len(ids) == T, f"{name}: text too short for T={T}"
    out = out_root / name
    shutil.rmtree(out, ignore_errors=True)
    # one fixture leaves default-valued keys out of config.json, to test the defaults
    export_checkpoint(model, out, tokenizer=tok, minimal_config=name in MINIMAL_CONFIG)
    logits = checked_logits(out, ids)
    write_golden(out / "golden.safetensors",
                 {"input_ids": torch.tensor(ids, dtype=torch.int32), "logits": logits}, tok.decode(ids))
    return out, logits


def make_encoder(name, overrides, text, tok, out_root: Path):
    tok = tk.load_from_str(tok.to_str())  # own copy: we add [CLS] to it
    tok.add_special_tokens(["[CLS]"])
    cfg = ModelConfig.from_dict(dict(overrides, vocab_size=tok.get_vocab_size(),
                                     cls_token_id=tok.token_to_id("[CLS]")))
    model = build_model(cfg)
    randomize_(model, seeded(name))
    ids = tok.encode(text).ids
    assert 1 <= len(ids) <= cfg.max_length - 1
    out = out_root / name
    shutil.rmtree(out, ignore_errors=True)
    export_checkpoint(model, out, tokenizer=tok)
    logits = checked_logits(out, ids).double()
    write_golden(out / "golden.safetensors",
                 {"input_ids": torch.tensor(ids, dtype=torch.int32), "logits": logits.float(),
                  "probs": torch.softmax(logits, -1).float()}, text)
    return out, logits


# -----------------------------------------------------------------------------
# tokenizer cases

HANDWRITTEN = [
    "", "Hello, world!", "In the beginning God created the heaven and the earth.",
    " leading space", "trailing spaces   ", "  multiple   spaces  between  words  ", "a  b   c    d",
    "\ttabs\tand\t\ttabs\t", "line1\nline2\n\nline4\n", "windows\r\nline\r\nendings\r\n", "\n\n\n", "   ", "\t",
    " \n \n ", "mixed \t \n  whitespace\t\n", "trailing newline\n", "\r", "\r\n\r\n", "word\n  indented\n\tand tab",
    " " * 40, "x" + " " * 17 + "y",
    "1234567890", "3.14159 and 2,718,281,828", "Year 2024: 365 days, 24h", "0x1F600 0b1010 1e-9", "٣ ٤ ٥ arabic digits",
    "Wait... what?!?!", "--- *** ((())) [[]] {{}} <<>>", "\"quoted\" 'single' `back`", "a-b_c.d/e\\f|g~h",
    "!!!!!!!!!!!!!!!!!!!!!!!!", "???...!!!;;;:::", "email@example.com https://example.org/path?q=1&r=2#frag",
    "It's John's; they're here; don't; we've; I'm; you'll; he'd.", "IT'S DON'T THEY'RE", "rock 'n' roll, 'tis",
    "can't won't shan't y'all", "the dogs' bones", "’curly’ apostrophes’s",
    "naïve café résumé déjà vu", "Ελληνικά κείμενο", "Русский текст, ёж", "עברית", "العربية", "हिन्दी भाषा",
    "ไทย", "Tiếng Việt có dấu",
    "e\u0301 e + combining acute", "Z\u0351\u0332a\u0300lgo\u0361\u0334", "n\u0303o\u0308", "\u0301 leading combining mark",
    "😀", "I 👍🏽 this", "👨\u200d👩\u200d👧\u200d👦 family", "🏳️\u200d🌈 flag", "🇫🇷🇯🇵🇺🇸", "I ❤️ NY", "🙂🙃😉😊",
    "日本語のテキストです。", "中文文本，标点符号。", "한국어 텍스트", "混合 mixed 文本 text", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ",
    "bad \ufffd byte", "\ufffd\ufffd\ufffd", "zero\u200bwidth\u200cnon\u200djoiner", "\ufeffBOM at start",
    "no\u00a0break\u00a0space", "ideographic\u3000space", "line\u2028separator", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙", "ﬁ ﬂ ligatures",
    "bell\x07 and \x1b[0m escape", "nul\x00char", "tab\tthen\u00a0nbsp\u2009thin",
    "And God said, Let there be light: and there was light.\n",
    "The LORD is my shepherd; I shall not want. 🐑 羊",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
]
SPECIAL = ["<|endoftext|>", "Amen.<|endoftext|>And", "a <|endoftext|> b", "<|endoftext|><|endoftext|>", "<|endoftext"]


def tokenizer_cases(tok, data: Path, n_kjv: int = 200, n_fortunes: int = 100, seed: int = 20240601):
    rng = random.Random(seed)
    verses = []
    for split in ("train", "valid", "test"):
        verses += (data / "kjv" / f"{split}.txt").read_text().splitlines()
    texts = list(HANDWRITTEN)
    for v in rng.sample(verses, n_kjv):
        texts.append(v + "\n" if rng.random() < 0.3 else v)
    texts += rng.sample(corpus.read_fortunes(data / "fortunes" / "fortunes.txt"), n_fortunes)
    cases = [{"text": t, "ids": tok.encode(t).ids} for t in texts]
    for c in cases:  # byte-level BPE is lossless
        assert tok.decode(c["ids"]) == c["text"], c
        assert tk.EOS_ID not in c["ids"]
    special = [{"text": t, "ids": tok.encode(t).ids} for t in SPECIAL]
    return cases, special


def dump_json(path: Path, cases: list):
    """One case per line: small, and a changed case is a one-line diff."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("[\n" + ",\n".join(json.dumps(c, ensure_ascii=False) for c in cases) + "\n]\n")


def make_all(fixtures: Path = FIXTURES, data: Path = corpus.DEFAULT_OUT):
    torch.set_num_threads(1)  # multi-threaded reductions would make the bytes vary run to run
    data = Path(data)
    if not (data / "kjv" / "train.txt").exists() or not (data / "fortunes" / "fortunes.txt").exists():
        corpus.build(data, train_tokenizer=False)
    train_txt = data / "kjv" / "train.txt"

    # tokenizer fixtures: the bundled model's tokenizer and its test cases
    tok_dir = fixtures / "tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    big = corpus.kjv_tokenizer(data)
    big.save(str(tok_dir / "tokenizer.json"))
    if (data / "tokenizer.json").exists():
        assert (data / "tokenizer.json").read_bytes() == (tok_dir / "tokenizer.json").read_bytes(), \
            "data/tokenizer.json differs from the fixture; rerun msgen_tools.corpus"
    cases, special = tokenizer_cases(big, data)
    dump_json(tok_dir / "cases.json", cases)
    dump_json(tok_dir / "special_cases.json", special)
    print(f"{tok_dir}: tokenizer.json ({big.get_vocab_size()} tokens), {len(cases)} cases, {len(special)} special")

    # golden models
    golden = fixtures / "golden"
    golden.mkdir(parents=True, exist_ok=True)
    tiny = tiny_tokenizer(train_txt)
    text = " ".join(train_txt.read_text().splitlines()[:6])
    index = []
    for name, (over, T) in DECODERS.items():
        out, logits = make_decoder(name, over, T, tiny, text, golden)
        past = " (past the context: positions >= N use the §1 rule)" if T > ModelConfig.load(out / "config.json").context else ""
        index.append((name, json.loads((out / "config.json").read_text()), f"T={T}{past}", logits))
    for name, (over, txt) in ENCODERS.items():
        out, logits = make_encoder(name, over, txt, tiny, golden)
        n = len(tk.load(out / "tokenizer.json").encode(txt).ids) + 1
        index.append((name, json.loads((out / "config.json").read_text()), f"{txt!r}, n={n} with [CLS]", logits))
    write_readme(golden, index)
    size = sum(p.stat().st_size for p in golden.rglob("*") if p.is_file())
    print(f"{golden}: {len(index)} fixtures, {size / 1024:.0f} KiB")


def write_readme(golden: Path, index):
    lines = ["# Golden fixtures", "",
             "Generated by `python -m msgen_tools.make_fixtures` (tools/msgen_tools/make_fixtures.py); do not edit.",
             "Each directory is a §4 checkpoint (config.json, model.safetensors f32, tokenizer.json) plus",
             "golden.safetensors: decoders `input_ids` int32 [T] and `logits` float32 [T, V] (logits[i] is the",
             "distribution after tokens 0..i); encoders `input_ids` int32 without [CLS], `logits` and `probs`",
             "float32 [labels]. Logits were computed in float64 from the stored f32 weights; weights are random",
             "(std 0.3-0.5, random biases and norm gains), so expect f32 agreement around 1e-4 relative, not 1e-7.",
             "Decoder logits are causal: a prefix of input_ids gives the same prefix of logits, so prefill/decode",
             "splits can be checked at every k. The tokenizer was trained on the first 2,000 KJV verses (300",
             "tokens; encoders add a [CLS] special token). cst_a2_shared_untied_past_context writes a minimal",
             "config.json (keys equal to their §4 default left out) to exercise default handling; its T=40 runs",
             "past the context N=16, where the logits follow the §1 rule (last G-1 summaries, re-indexed).", "",
             "| fixture | architecture | key settings | input | logit std |", "|---|---|---|---|---|"]
    for name, cfg, inp, logits in index:
        keys = ("d_model", "n_heads", "slice_length", "extension_ratio", "max_slices", "max_positions",
                "shared_local_global", "tie_embeddings", "activation", "layer_scales", "scales", "pool_factor",
                "layers_per_scale", "agg_layers")
        settings = ", ".join(f"{k}={cfg[k]}" for k in keys if k in cfg)
        lines.append(f"| {name} | {cfg['architecture']} | {settings} | {inp} | {logits.float().std():.2f} |")
    (golden / "README.md").write_text("\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", type=Path, default=FIXTURES, help="Tests/Fixtures directory")
    ap.add_argument("--data", type=Path, default=corpus.DEFAULT_OUT, help="corpus dir (built if missing)")
    args = ap.parse_args(argv)
    make_all(args.fixtures, args.data)


if __name__ == "__main__":
    main()
