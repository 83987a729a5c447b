"""A tiny end-to-end training run: resume must be exact and export must load."""

import json

import pytest
import torch
from safetensors.torch import load_file

from msgen_tools import tokenizer as tk
from msgen_tools.export import load_checkpoint
from msgen_tools.train_lm import main

VERSES = ["In the beginning God created the heaven and the earth.",
          "And the earth was without form, and void; and darkness was upon the face of the deep.",
          "And the Spirit of God moved upon the face of the waters.",
          "And God said, Let there be light: and there was light."]


def run(tmp, name, *extra):
    main(["--run-dir", str(tmp / name), "--train", str(tmp / "train.txt"), "--valid", str(tmp / "valid.txt"),
          "--tokenizer", str(tmp / "tok.json"), "--d-model", "16", "--n-layers", "1", "--n-heads", "2",
          "--d-ff", "32", "--slice-length", "4", "--max-slices", "4", "--batch-size", "2", "--steps", "6",
          "--warmup", "2", "--log-every", "2", "--eval-every", "3", "--eval-windows", "2", "--save-every", "2",
          "--dropout", "0.1", "--threads", "1", *extra])


def test_resume_is_exact_and_exports(tmp_path):
    (tmp_path / "train.txt").write_text("\n".join(VERSES * 10) + "\n")
    (tmp_path / "valid.txt").write_text("\n".join(VERSES[::-1] * 3) + "\n")
    tk.train_bpe(tk.lines_of(str(tmp_path / "train.txt")), 280).save(str(tmp_path / "tok.json"))

    run(tmp_path, "straight")
    run(tmp_path, "chunked", "--stop-at", "3")
    assert not (tmp_path / "chunked" / "final").exists()
    main(["--run-dir", str(tmp_path / "chunked"), "--resume"])

    a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "chunked" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    model, cfg = load_checkpoint(tmp_path / "straight" / "final")
    assert cfg.architecture == "cst-decoder" and cfg.vocab_size == 280 and cfg.eos_token_id == 0


@pytest.mark.parametrize("arch,extra", [("top-down", []), ("bottom-up", ["--agg-layers", "1"])])
def test_multiscale_trains_and_exports(tmp_path, arch, extra):
    """--arch top-down / bottom-up build a §8 config from the flags, the loss goes down,
    and the export loads back as that architecture."""
    (tmp_path / "train.txt").write_text("\n".join(VERSES * 10) + "\n")
    (tmp_path / "valid.txt").write_text("\n".join(VERSES[::-1] * 3) + "\n")
    tk.train_bpe(tk.lines_of(str(tmp_path / "train.txt")), 280).save(str(tmp_path / "tok.json"))
    run(tmp_path, arch, "--arch", arch, "--layers-per-scale", "1,1,1", "--pool-factor", "2", "--max-positions", "16",
        "--steps", "12", "--dropout", "0", *extra)
    model, cfg = load_checkpoint(tmp_path / arch / "final")
    assert cfg.architecture == f"{arch}-decoder" and cfg.scales == 3 and cfg.layers_per_scale == [1, 1, 1]
    assert cfg.n_layers is None and cfg.max_positions == 16
    records = [json.loads(line) for line in (tmp_path / arch / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0]
    assert records[-1]["split"] == "valid" and records[-1]["peak_rss_bytes"] > 10 * 2**20
