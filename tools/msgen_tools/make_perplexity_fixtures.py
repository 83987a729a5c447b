"""Expected perplexities for the Swift `msgen perplexity` tests (Tests/Fixtures/perplexity/).

The PyTorch reference scores a KJV passage with golden fixture models (CSTs, the baseline, a
top-down and a bottom-up decoder) in float64, with the windows of DESIGN §6 at several (context, stride) pairs.

    .venv/bin/python -m msgen_tools.make_perplexity_fixtures
"""
import json
import subprocess
from pathlib import Path

import torch

from . import tokenizer as tk
from .export import load_checkpoint
from .train_lm import perplexity, token_byte_lengths

ROOT = Path(__file__).resolve().parents[2] / "Tests" / "Fixtures"
OUT = ROOT / "perplexity"
MODELS = ["cst_a3_shared_untied_gelutanh_full", "transformer_untied_gelutanh", "cst_a2_shared_untied_past_context",
          "topdown_k2_s3_untied_gelu", "bottomup_k4_s2_tied_gelu_agg2"]  # the last two: §8
SETTINGS = [(None, None), (32, 8), (16, 15), (16, 1), (8, 5)]


def passage() -> str:
    verses = subprocess.run(["bible", "-f", "ps23:1-ps24:10"], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    return "\n".join(v.split(" ", 1)[1] for v in verses if " " in v) + "\n"


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    text = passage()
    (OUT / "psalm.txt").write_text(text, encoding="utf-8")
    cases = []
    for name in MODELS:
        path = ROOT / "golden" / name
        model, cfg = load_checkpoint(path, dtype=torch.float64)
        tok = tk.load(path / "tokenizer.json")
        ids = tok.encode(text).ids
        lengths = token_byte_lengths(tok)
        for context, stride in SETTINGS:
            c = min(context or cfg.context, cfg.context)
            s = stride if stride is not None else c - 1
            r = perplexity(model, ids, c, s, byte_lengths=lengths)
            cases.append({"model": name, "context": c, "stride": s, **r})
    (OUT / "expected.json").write_text(json.dumps(cases, indent=1) + "\n")


if __name__ == "__main__":
    main()
