"""A small Hugging Face GPT-2 checkpoint and its logits, for the converter test
(Tests/Fixtures/gpt2/). Made locally with `transformers` (random weights, no download).

    .venv/bin/python -m msgen_tools.make_gpt2_fixture
"""
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

from . import tokenizer as tk

ROOT = Path(__file__).resolve().parents[2] / "Tests" / "Fixtures"
OUT = ROOT / "gpt2"


def main():
    torch.manual_seed(0)
    tok_path = ROOT / "golden" / "transformer_untied_gelutanh" / "tokenizer.json"
    tok = tk.load(tok_path)
    cfg = GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                     bos_token_id=0, eos_token_id=0, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # larger than the default init, so the logits are far from uniform
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    if OUT.exists():
        shutil.rmtree(OUT)
    model.save_pretrained(OUT, safe_serialization=True)
    shutil.copyfile(tok_path, OUT / "tokenizer.json")
    for extra in ("generation_config.json",):
        (OUT / extra).unlink(missing_ok=True)
    ids = tok.encode("In the beginning God created the heaven and the earth. And the earth was without form").ids
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    save_file({"input_ids": torch.tensor(ids, dtype=torch.int32), "logits": logits.float()}, str(OUT / "golden.safetensors"))


if __name__ == "__main__":
    main()
