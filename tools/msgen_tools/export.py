"""Checkpoint directories in the §4 format, and loading them back.

    out/config.json         ModelConfig.to_dict()
    out/model.safetensors   the state dict, names exactly as in §4
    out/tokenizer.json      Hugging Face tokenizer
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .models import ModelConfig, build_model

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def export_checkpoint(model, out_dir, tokenizer=None, dtype: str = "f32", metadata: dict | None = None,
                      minimal_config: bool = False) -> Path:
    """Write config.json, model.safetensors (in `dtype`) and tokenizer.json.
    `tokenizer` is a tokenizers.Tokenizer or a path to a tokenizer.json.
    minimal_config leaves out keys equal to their defaults (to test default handling)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg: ModelConfig = model.cfg
    with open(out / "config.json", "w") as f:
        json.dump(cfg.to_dict(minimal=minimal_config), f, indent=2)
        f.write("\n")
    # clone: safetensors refuses views/shared storage, and we never want to write
    # an autograd-tracked or non-contiguous tensor
    tensors = {k: v.detach().to("cpu", DTYPES[dtype]).contiguous().clone() for k, v in model.state_dict().items()}
    # metadata goes in as one JSON string: safetensors writes several keys in
    # hash-map order, and we want the same model to give the same bytes
    meta = {"msgen_tools": json.dumps(metadata, sort_keys=True)} if metadata else {}
    save_file(tensors, str(out / "model.safetensors"), metadata=meta)
    if tokenizer is not None:
        if isinstance(tokenizer, (str, Path)):
            shutil.copyfile(tokenizer, out / "tokenizer.json")
        else:
            tokenizer.save(str(out / "tokenizer.json"))
    return out


def load_checkpoint(path, dtype=torch.float32):
    """(model, cfg) from a checkpoint directory. Strict: every tensor must exist
    with the right shape, and there must be no extra ones."""
    path = Path(path)
    cfg = ModelConfig.load(path / "config.json")
    model = build_model(cfg)
    state = load_file(str(path / "model.safetensors"))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    bad = [f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
           if k in state and state[k].shape != v.shape]
    if missing or extra or bad:
        raise ValueError(f"{path}: missing {missing}, unexpected {extra}, bad shapes {bad}")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()})
    return model.to(dtype).eval(), cfg
