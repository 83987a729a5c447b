"""Rebuild the training corpus from the Debian packages bible-kjv and fortunes.

    python -m msgen_tools.corpus [--out tools/data]

writes (default out dir: tools/data/, git-ignored):

    kjv/train.txt   the rest: Genesis 1:1 .. Romans 2:29 (27,992 verses)
    kjv/valid.txt   the 1,555 verses before the test split: Romans 3:1 .. Colossians 4:4
    kjv/test.txt    the last 1,555 verses, Colossians 4:5 .. Revelation 22:21
    fortunes/fortunes.txt   optional extra training text: one fortune per record,
                    records separated by a line holding only "%"
    tokenizer.json  byte-level BPE, 4096 tokens, trained on kjv/train.txt only

One verse per line, without its reference ("Ge1:1"), "\\n"-terminated, ASCII.
The split is by verse order, so validation and test are unseen *books*, not
shuffled verses: held-out perplexity measures generalisation, not memorisation.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

from . import tokenizer as tk

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "data"
N_HELD_OUT = 1555  # verses in each of valid and test
TOKENIZER_VOCAB = 4096
FORTUNE_DIR = Path("/usr/share/games/fortunes")
# ascii-art is pictures, translate-me is mostly non-English; neither is prose
FORTUNE_SKIP = {"ascii-art", "translate-me"}


def kjv_verses() -> list[tuple[str, str]]:
    """(reference, text) for every verse, in canonical order."""
    out = subprocess.run(["bible", "-f", "gen1:1-rev22:21"], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, check=True).stdout
    verses = []
    for line in out.splitlines():
        ref, _, text = line.partition(" ")
        verses.append((ref, text.strip()))
    return verses


def kjv_split(verses):
    """(train, valid, test) lists of (ref, text) by verse order."""
    test = verses[-N_HELD_OUT:]
    valid = verses[-2 * N_HELD_OUT:-N_HELD_OUT]
    train = verses[: -2 * N_HELD_OUT]
    assert test[0][0] == "Col4:5" and test[-1][0] == "Rev22:21", (test[0], test[-1])
    return train, valid, test


def unstrike(line: str) -> str:
    """Render a line that uses BACKSPACE overstrike (old-style bold "x\\bx" and
    underline "_\\bx" or "___\\b\\b\\bxyz") the way a terminal shows it: an
    underscore never hides a letter."""
    if "\x08" not in line:
        return line
    cells, pos = [], 0
    for ch in line:
        if ch == "\x08":
            pos = max(pos - 1, 0)
            continue
        if pos == len(cells):
            cells.append(ch)
        elif ch != "_":
            cells[pos] = ch
        pos += 1
    return "".join(cells)


def fortunes() -> list[str]:
    """Every fortune of the installed (non-offensive) collection, cleaned:
    overstrike sequences (x BACKSPACE y, old-style bold/underline) collapsed to y,
    trailing whitespace stripped. Sorted by file name for determinism."""
    recs = []
    for path in sorted(FORTUNE_DIR.iterdir()):
        if path.suffix in (".dat", ".u8") or path.is_symlink() or path.name in FORTUNE_SKIP:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        text = "\n".join(unstrike(line) for line in text.split("\n"))
        for rec in re.split(r"^%$", text, flags=re.M):
            rec = "\n".join(line.rstrip() for line in rec.strip("\n").splitlines()).strip("\n")
            if rec.strip():
                recs.append(rec)
    return recs


def write_lines(path: Path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")


def build(out: Path = DEFAULT_OUT, train_tokenizer: bool = True) -> Path:
    out = Path(out)
    train, valid, test = kjv_split(kjv_verses())
    for name, part in (("train", train), ("valid", valid), ("test", test)):
        write_lines(out / "kjv" / f"{name}.txt", [t for _, t in part])
        print(f"kjv/{name}.txt: {len(part)} verses, {part[0][0]} .. {part[-1][0]}")
    recs = fortunes()
    (out / "fortunes").mkdir(parents=True, exist_ok=True)
    (out / "fortunes" / "fortunes.txt").write_text("\n%\n".join(recs) + "\n", encoding="utf-8")
    print(f"fortunes/fortunes.txt: {len(recs)} fortunes")
    if train_tokenizer:
        tok = kjv_tokenizer(out)
        tok.save(str(out / "tokenizer.json"))
        print(f"tokenizer.json: {tok.get_vocab_size()} tokens")
    return out


def kjv_tokenizer(out: Path = DEFAULT_OUT):
    """The 4096-token BPE of the bundled model, trained on kjv/train.txt."""
    return tk.train_bpe(tk.lines_of(str(Path(out) / "kjv" / "train.txt")), TOKENIZER_VOCAB)


def read_fortunes(path) -> list[str]:
    text = Path(path).read_text(encoding="utf-8")
    return [r.strip("\n") for r in text.split("\n%\n") if r.strip()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--no-tokenizer", action="store_true", help="skip training tokenizer.json")
    args = ap.parse_args(argv)
    build(args.out, train_tokenizer=not args.no_tokenizer)


if __name__ == "__main__":
    main()
