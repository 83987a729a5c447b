"""The committed golden fixtures must match what the current code computes."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from msgen_tools import tokenizer as tk
from msgen_tools.export import load_checkpoint

FIXTURES = Path(__file__).resolve().parents[2] / "Tests" / "Fixtures"
GOLDEN = sorted(p for p in (FIXTURES / "golden").glob("*") if (p / "golden.safetensors").exists())


@pytest.mark.skipif(not GOLDEN, reason="fixtures not generated")
@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.name)
def test_golden_matches_model(path):
    model, cfg = load_checkpoint(path, dtype=torch.float64)
    g = load_file(str(path / "golden.safetensors"))
    ids = g["input_ids"].long()
    assert g["input_ids"].dtype == torch.int32
    assert cfg.vocab_size == tk.load(path / "tokenizer.json").get_vocab_size()
    out = model(ids[None])[0].float()
    assert (out - g["logits"]).abs().max() < 1e-5
    if cfg.architecture == "ms-trans-encoder":
        assert (torch.softmax(out, -1) - g["probs"]).abs().max() < 1e-6
    else:
        assert g["logits"].shape == (len(ids), cfg.vocab_size)


@pytest.mark.skipif(not (FIXTURES / "tokenizer" / "cases.json").exists(), reason="fixtures not generated")
def test_tokenizer_cases_match():
    tok = tk.load(FIXTURES / "tokenizer" / "tokenizer.json")
    assert tok.get_vocab_size() == 4096 and tok.token_to_id("<|endoftext|>") == 0
    for name in ("cases.json", "special_cases.json"):
        for case in json.loads((FIXTURES / "tokenizer" / name).read_text()):
            assert tok.encode(case["text"]).ids == case["ids"], case["text"]
