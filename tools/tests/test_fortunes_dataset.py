"""The fortune-category data set: deterministic, deduplicated, stratified."""

import json
from collections import Counter
from pathlib import Path

import pytest

from msgen_tools import fortunes_dataset as fd

WORDS = {"alpha": "apple", "beta": "banana", "gamma": "cherry"}


def fake_fortunes(root: Path, n=(23, 40, 11)):
    """Three category files in fortune format, with an in-file duplicate, a text shared
    by all three categories (in different whitespace) and an overstruck (BACKSPACE) record."""
    root.mkdir()
    for (label, word), count in zip(WORDS.items(), n):
        recs = [f"{word} number {i}\n\t\t-- {label}" for i in range(count)]
        recs.append(recs[0])  # duplicate inside the file
        recs.append("shared by two\ncategories" if label == "alpha" else "shared  by two categories")
        if label == "gamma":
            recs.append("_\bb_\bo_\bl_\bd cherry")
        (root / label).write_text("\n%\n".join(recs) + "\n%\n")
        (root / f"{label}.dat").write_bytes(b"\0")  # ignored
    return list(WORDS)


def test_build_is_deterministic_and_stratified(tmp_path):
    labels = fake_fortunes(tmp_path / "src")
    a = fd.build(tmp_path / "a", tmp_path / "src", labels, with_tokenizer=True, quiet=True)
    b = fd.build(tmp_path / "b", tmp_path / "src", labels, with_tokenizer=True, quiet=True)
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl", "tokenizer.json", "stats.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert a["duplicates_within_a_category"] == 3  # one per file
    assert a["texts_in_several_categories"] == 1 and a["records_dropped_as_ambiguous"] == 3
    kept = {"alpha": 23, "beta": 40, "gamma": 12}
    assert a["kept"] == sum(kept.values())

    rows = {s: fd.read_jsonl(tmp_path / "a" / f"{s}.jsonl") for s in fd.SPLITS}
    keys = [fd.dedup_key(r["text"]) for s in fd.SPLITS for r in rows[s]]
    assert len(keys) == len(set(keys)) == a["kept"]  # no duplicates inside or across splits
    assert not any("shared" in k for k in keys)
    assert "bold cherry" in keys  # overstrike rendered
    for label, n in kept.items():
        counts = {s: Counter(r["label"] for r in rows[s])[label] for s in fd.SPLITS}
        assert counts["valid"] == counts["test"] == round(0.1 * n)
        assert counts["train"] == n - 2 * round(0.1 * n)

    tok = fd.tk.load(tmp_path / "a" / "tokenizer.json")
    assert tok.token_to_id("<|endoftext|>") == 0 and tok.token_to_id(fd.CLS) == fd.CLS_ID


def test_seed_changes_the_split_only(tmp_path):
    labels = fake_fortunes(tmp_path / "src")
    fd.build(tmp_path / "a", tmp_path / "src", labels, seed=0, with_tokenizer=False, quiet=True)
    fd.build(tmp_path / "b", tmp_path / "src", labels, seed=1, with_tokenizer=False, quiet=True)
    texts = lambda d: sorted(r["text"] for s in fd.SPLITS for r in fd.read_jsonl(d / f"{s}.jsonl"))
    assert texts(tmp_path / "a") == texts(tmp_path / "b")
    assert fd.read_jsonl(tmp_path / "a" / "test.jsonl") != fd.read_jsonl(tmp_path / "b" / "test.jsonl")


def test_missing_category_is_reported(tmp_path):
    fake_fortunes(tmp_path / "src")
    stats = fd.build(tmp_path / "a", tmp_path / "src", ["alpha", "nope", "beta"], with_tokenizer=False, quiet=True)
    assert stats["missing_categories"] == ["nope"] and stats["labels"] == ["alpha", "beta"]


@pytest.mark.skipif(not all((fd.FORTUNE_DIR / c).is_file() for c in fd.LABELS), reason="fortunes not installed")
def test_real_data_set_size(tmp_path):
    stats = fd.build(tmp_path / "cls", with_tokenizer=False, quiet=True)
    assert stats["kept"] == 6047
    assert {s: stats["splits"][s]["total"] for s in fd.SPLITS} == {"train": 4837, "valid": 605, "test": 605}
    json.dumps(stats)
