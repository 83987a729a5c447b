"""Fortune-category text classification data set (for the MS-Trans classifier).

    python -m msgen_tools.fortunes_dataset [--out tools/data/fortunes-cls] [--no-tokenizer]

Rebuilds, byte for byte, from the Debian package `fortunes` (/usr/share/games/fortunes):

    train.jsonl  valid.jsonl  test.jsonl   one {"text": ..., "label": ...} per line
    tokenizer.json   byte-level BPE, 4,096 tokens, trained on train.jsonl only,
                     special tokens "<|endoftext|>" (id 0) and "[CLS]" (id 1)
    stats.json       counts per split and label

Records are the "%"-separated fortunes of eight English category files (LABELS),
cleaned the way corpus.py cleans them (BACKSPACE overstrike rendered, trailing
whitespace stripped). A text that occurs twice in one file is kept once; a text that
occurs in two or more categories is dropped everywhere (its label is ambiguous).
Texts are compared after collapsing whitespace runs, so the same fortune with a
different line break or indentation counts as a duplicate.

Split: per label, the texts are ordered by sha256(f"{SEED}:{text}") and the first
round(10%) go to test, the next round(10%) to valid, the rest to train (stratified
80/10/10). The order uses no RNG library, so it is the same on every machine and
every numpy/torch version. Inside each file the records are in that hash order too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

from . import tokenizer as tk
from .corpus import FORTUNE_DIR, unstrike

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "data" / "fortunes-cls"
LABELS = ["computers", "definitions", "men-women", "politics", "science", "songs-poems", "work", "zippy"]
SEED = 0
HELD_OUT = 0.1  # fraction of each label in valid and in test
TOKENIZER_VOCAB = 4096
CLS = "[CLS]"
CLS_ID = 1
SPLITS = ("train", "valid", "test")


def read_category(path: Path) -> list[str]:
    """The records of one fortune file, cleaned as in corpus.fortunes()."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    text = "\n".join(unstrike(line) for line in text.split("\n"))
    recs = []
    for rec in re.split(r"^%$", text, flags=re.M):
        rec = "\n".join(line.rstrip() for line in rec.strip("\n").splitlines()).strip("\n")
        if rec.strip():
            recs.append(rec)
    return recs


def dedup_key(text: str) -> str:
    return " ".join(text.split())


def collect(fortune_dir: Path = FORTUNE_DIR, labels=LABELS) -> tuple[dict[str, list[str]], dict]:
    """{label: [unique, unambiguous texts]} plus a report of what was removed.
    Missing category files are skipped and listed in the report."""
    fortune_dir = Path(fortune_dir)
    present = [c for c in labels if (fortune_dir / c).is_file()]
    missing = [c for c in labels if c not in present]
    raw = {c: read_category(fortune_dir / c) for c in present}
    where = defaultdict(set)
    for c, recs in raw.items():
        for r in recs:
            where[dedup_key(r)].add(c)
    out, seen = {}, set()
    within = 0
    for c in present:
        keep = []
        for r in raw[c]:
            k = dedup_key(r)
            if len(where[k]) > 1:
                continue
            if k in seen:
                within += 1
                continue
            seen.add(k)
            keep.append(r)
        out[c] = keep
    cross = {k for k, cs in where.items() if len(cs) > 1}
    report = {"raw": {c: len(v) for c, v in raw.items()}, "missing_categories": missing,
              "duplicates_within_a_category": within,
              "texts_in_several_categories": len(cross),
              "records_dropped_as_ambiguous": sum(dedup_key(r) in cross for c in present for r in raw[c]),
              "kept": sum(len(v) for v in out.values())}
    return out, report


def order_key(text: str, seed: int = SEED) -> str:
    return hashlib.sha256(f"{seed}:{text}".encode("utf-8")).hexdigest()


def split(per_label: dict[str, list[str]], seed: int = SEED, held_out: float = HELD_OUT) -> dict[str, list[dict]]:
    """Stratified split: {"train"|"valid"|"test": [{"text", "label"}, ...]}."""
    parts = {s: [] for s in SPLITS}
    for label, texts in per_label.items():
        texts = sorted(texts, key=lambda t: order_key(t, seed))
        n_held = round(len(texts) * held_out)
        parts["test"] += [{"text": t, "label": label} for t in texts[:n_held]]
        parts["valid"] += [{"text": t, "label": label} for t in texts[n_held:2 * n_held]]
        parts["train"] += [{"text": t, "label": label} for t in texts[2 * n_held:]]
    for s in SPLITS:
        parts[s].sort(key=lambda r: order_key(r["text"], seed))
    return parts


def write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def train_tokenizer(texts, vocab_size: int = TOKENIZER_VOCAB):
    """BPE of the classifier: byte-level as tokenizer.py, plus [CLS] as id 1."""
    tok = tk.train_bpe(texts, vocab_size, extra_special=[CLS])
    assert tok.token_to_id(CLS) == CLS_ID
    return tok


def build(out: Path = DEFAULT_OUT, fortune_dir: Path = FORTUNE_DIR, labels=LABELS, seed: int = SEED,
          with_tokenizer: bool = True, quiet: bool = False) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_label, report = collect(fortune_dir, labels)
    if report["missing_categories"] and not quiet:
        print(f"warning: category files missing in {fortune_dir}: {report['missing_categories']}; using the rest")
    parts = split(per_label, seed)
    for s in SPLITS:
        write_jsonl(out / f"{s}.jsonl", parts[s])
    stats = {"source": str(fortune_dir), "seed": seed, "labels": [c for c in labels if c in per_label],
             **report,
             "splits": {s: {"total": len(parts[s]), **dict(sorted(Counter(r["label"] for r in parts[s]).items()))}
                        for s in SPLITS}}
    if with_tokenizer:
        tok = train_tokenizer([r["text"] for r in parts["train"]])
        tok.save(str(out / "tokenizer.json"))
        stats["tokenizer"] = {"vocab_size": tok.get_vocab_size(), "cls_token_id": CLS_ID, "trained_on": "train.jsonl"}
    with open(out / "stats.json", "w") as f:
        json.dump(stats, f, indent=2)
        f.write("\n")
    if not quiet:
        print(f"{out}: {report['kept']} texts ({report['raw']} raw; {report['duplicates_within_a_category']} "
              f"in-file duplicates and {report['records_dropped_as_ambiguous']} records of "
              f"{report['texts_in_several_categories']} cross-category texts removed)")
        for s in SPLITS:
            print(f"  {s}: {stats['splits'][s]}")
    return stats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--fortune-dir", type=Path, default=FORTUNE_DIR)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--no-tokenizer", action="store_true")
    args = ap.parse_args(argv)
    build(args.out, args.fortune_dir, seed=args.seed, with_tokenizer=not args.no_tokenizer)


if __name__ == "__main__":
    main()
