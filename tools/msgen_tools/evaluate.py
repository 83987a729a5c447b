"""Held-out perplexity of a checkpoint with the PyTorch reference, scored exactly as
`msgen perplexity` scores it (DESIGN §6 windows; the file tokenized whole, no BOS).

    .venv/bin/python -m msgen_tools.evaluate CHECKPOINT_DIR [--text tools/data/kjv/test.txt]
        [--context C] [--stride S] [--json]

CHECKPOINT_DIR is config.json + model.safetensors + tokenizer.json (a run's final/), or
a run dir, whose latest ckpt.pt is exported to RUN_DIR/snapshot/ first.
"""
import argparse
import json
import math
import time
from pathlib import Path

import torch

from . import tokenizer as tk
from .corpus import DEFAULT_OUT
from .export import export_checkpoint, load_checkpoint
from .models import ModelConfig, build_model
from .train_lm import encode_file, perplexity, token_byte_lengths


def snapshot(run_dir: Path) -> Path:
    """Exports the run's latest ckpt.pt (mid-training) as a checkpoint directory."""
    ck = torch.load(run_dir / "ckpt.pt", map_location="cpu", weights_only=True)
    model = build_model(ModelConfig.from_dict(ck["config"]))
    model.load_state_dict(ck["model"])
    args = json.loads((run_dir / "args.json").read_text())
    return export_checkpoint(model.eval(), run_dir / "snapshot", tokenizer=args["tokenizer"],
                             metadata={"step": ck["step"], "steps": args["steps"], "train": args["train"]})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--text", type=Path, default=DEFAULT_OUT / "kjv" / "test.txt")
    ap.add_argument("--context", type=int)
    ap.add_argument("--stride", type=int)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    path = a.checkpoint if (a.checkpoint / "config.json").exists() else snapshot(a.checkpoint)
    model, cfg = load_checkpoint(path)
    tok = tk.load(path / "tokenizer.json")
    ids = encode_file(tok, a.text)
    context = a.context or cfg.context
    t = time.perf_counter()
    r = perplexity(model, ids, context, a.stride, byte_lengths=token_byte_lengths(tok))
    r.update(seconds=time.perf_counter() - t, context=context, stride=a.stride or context - 1, text=str(a.text),
             checkpoint=str(path))
    if a.json:
        print(json.dumps(r))
    else:
        print(f"{a.text}: {r['tokens']} tokens, ppl {r['ppl']:.4f}, nll {r['nll'] / r['tokens']:.5f}/token, "
              f"{r['bits_per_byte']:.4f} bits/byte (context {context}, stride {r['stride']}, {r['seconds']:.1f} s)")


if __name__ == "__main__":
    main()
