"""Train a CST, baseline, top-down or bottom-up (Sources/MSModels/README.md) language model on the corpus from corpus.py.

    python -m msgen_tools.train_lm --arch cst --run-dir runs/cst [model/opt flags]
    python -m msgen_tools.train_lm --arch top-down --layers-per-scale 4,2 --pool-factor 4 --run-dir runs/td
    python -m msgen_tools.train_lm --run-dir runs/cst --resume        # continue

The run dir holds args.json, ckpt.pt (saved every --save-every steps and at the
end), log.jsonl (one JSON object per log/eval line) and, when training is done,
final/ = config.json + model.safetensors + tokenizer.json (export.py), ready for
`msgen convert`.

Resuming is exact: each step's batch and dropout noise are a pure function of
(seed, step), so 30 steps in one go and 15 + resumed 15 give identical weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import tokenizer as tk
from .corpus import DEFAULT_OUT, read_fortunes
from .export import export_checkpoint
from .models import ModelConfig, build_model, count_params

# -----------------------------------------------------------------------------
# data


def encode_file(tok, path) -> np.ndarray:
    """A whole text file as one token stream, tokenized exactly as `msgen perplexity`
    sees it (one string, no BOS)."""
    text = Path(path).read_text(encoding="utf-8")
    return np.array(tok.encode(text).ids, dtype=np.int32)


def encode_records(tok, records) -> np.ndarray:
    """Independent documents, each followed by eos so the model learns to stop."""
    out = []
    for enc in tok.encode_batch(records):
        out.extend(enc.ids)
        out.append(tk.EOS_ID)
    return np.array(out, dtype=np.int32)


def get_batch(data: np.ndarray, batch_size: int, seq_len: int, seed: int, step: int):
    """Random windows; the offsets depend only on (seed, step) so resume is exact."""
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(data) - seq_len - 1, size=batch_size)
    x = np.stack([data[s: s + seq_len] for s in starts])
    y = np.stack([data[s + 1: s + seq_len + 1] for s in starts])
    return torch.from_numpy(x).long(), torch.from_numpy(y).long()


# -----------------------------------------------------------------------------
# evaluation


def perplexity_windows(n: int, context: int, stride: int):
    """The windows `msgen perplexity` uses: windows of `context` tokens
    start every `stride` tokens; each scores only tokens no earlier window scored,
    given the tokens before them in the window. Token 0 is context only.
    Returns (start, end, first_scored) triples; scored positions are [first, end)."""
    if not 1 <= stride <= context - 1:
        raise ValueError(f"need 1 <= stride <= context-1, got stride={stride}, context={context}")
    out, start, next_pos = [], 0, 1
    while next_pos < n:
        end = min(start + context, n)
        if end > next_pos:
            out.append((start, end, next_pos))
            next_pos = end
        start += stride
    return out


def token_byte_lengths(tok) -> list[int]:
    """UTF-8 bytes each token stands for (0 for special tokens), for bits/byte."""
    byte_of = {c: b for b, c in enumerate(bytes_to_unicode())}
    lengths = [0] * tok.get_vocab_size()
    specials = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    for piece, i in tok.get_vocab().items():
        lengths[i] = 0 if piece in specials else sum(1 for ch in piece if ch in byte_of)
    return lengths


def bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table, indexed by byte value."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


@torch.no_grad()
def perplexity(model, ids, context: int, stride: int | None = None, byte_lengths=None, batch_size: int = 8):
    """Held-out perplexity with the §6 semantics. Returns tokens, nll (nats, sum),
    ppl and, given byte_lengths, bits_per_byte."""
    model.eval()
    ids = torch.as_tensor(np.asarray(ids), dtype=torch.long)
    stride = context - 1 if stride is None else stride
    wins = perplexity_windows(len(ids), context, stride)
    nll, n_tok, n_bytes = 0.0, 0, 0
    # batch the full-length windows; the last one may be shorter and goes alone
    for i in range(0, len(wins), batch_size):
        group = wins[i: i + batch_size]
        for same in ([w for w in group if w[1] - w[0] == context], [w for w in group if w[1] - w[0] != context]):
            if not same:
                continue
            x = torch.stack([ids[s:e] for s, e, _ in same])
            logits = model(x)
            logp = torch.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), -1)
            for row, (s, e, first) in enumerate(same):
                tgt = ids[first:e]
                lp = logp[row, first - s - 1: e - s - 1].gather(-1, tgt[:, None]).squeeze(-1)
                nll -= lp.double().sum().item()
                n_tok += len(tgt)
                if byte_lengths is not None:
                    n_bytes += sum(byte_lengths[t] for t in tgt.tolist())
    out = {"tokens": n_tok, "nll": nll, "ppl": math.exp(nll / max(n_tok, 1))}
    if byte_lengths is not None:
        out["bits_per_byte"] = nll / math.log(2) / max(n_bytes, 1)
    return out


@torch.no_grad()
def quick_val_loss(model, data, seq_len, n_windows, batch_size):
    """Mean loss on the same evenly spaced windows every time (cheap progress signal)."""
    model.eval()
    starts = np.linspace(0, len(data) - seq_len - 1, n_windows).astype(np.int64)
    losses = []
    for i in range(0, n_windows, batch_size):
        s = starts[i: i + batch_size]
        x = torch.from_numpy(np.stack([data[a: a + seq_len] for a in s])).long()
        y = torch.from_numpy(np.stack([data[a + 1: a + seq_len + 1] for a in s])).long()
        logits = model(x).float()
        losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item() * len(s))
    model.train()
    return sum(losses) / n_windows


# -----------------------------------------------------------------------------
# training


def lr_at(step, args):
    """Linear warmup, then cosine decay to min_lr at the last step."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * min(frac, 1.0)))


def model_config(args, vocab_size) -> ModelConfig:
    common = dict(vocab_size=vocab_size, d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads,
                  d_ff=args.d_ff, eos_token_id=tk.EOS_ID, tie_embeddings=args.tie_embeddings,
                  activation=args.activation)
    if args.arch in ("top-down", "bottom-up"):
        del common["n_layers"]  # §8: the depth is layers_per_scale (and agg_layers)
        lps = [int(n) for n in args.layers_per_scale.split(",")]
        extra = dict(agg_layers=args.agg_layers) if args.arch == "bottom-up" else {}
        cfg = ModelConfig(architecture=f"{args.arch}-decoder", scales=len(lps), pool_factor=args.pool_factor,
                          layers_per_scale=lps, max_positions=args.max_positions, **extra, **common)
        cfg.validate()
        return cfg
    if args.arch == "cst":
        return ModelConfig(architecture="cst-decoder", slice_length=args.slice_length,
                           extension_ratio=args.extension_ratio, max_slices=args.max_slices,
                           shared_local_global=not args.separate_global, **common)
    return ModelConfig(architecture="transformer-decoder", max_positions=args.max_positions, **common)


def make_optimizer(model, args):
    # no weight decay on biases and LayerNorm gains (1-D tensors), as in nanoGPT
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=args.lr, betas=(0.9, 0.95))


def save_ckpt(path: Path, model, opt, step, cfg):
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "config": cfg.to_dict()}, tmp)
    os.replace(tmp, path)  # atomic: an interrupted save never corrupts the last good checkpoint


def log(run_dir: Path, rec: dict):
    print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rec.items()), flush=True)
    with open(run_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")


def train(args):
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = tk.load(args.tokenizer)

    train_data = encode_file(tok, args.train)
    if args.extra:
        extra = encode_records(tok, read_fortunes(args.extra))
        train_data = np.concatenate([train_data, [tk.EOS_ID], extra]).astype(np.int32)
    val_data = encode_file(tok, args.valid)

    cfg = model_config(args, tok.get_vocab_size())
    torch.manual_seed(args.seed)  # the initial weights
    model = build_model(cfg, dropout=args.dropout)
    opt = make_optimizer(model, args)
    seq_len = args.seq_len or cfg.context
    if seq_len > cfg.context:
        raise SystemExit(f"--seq-len {seq_len} exceeds the model context {cfg.context}")

    start = 0
    ckpt_path = run_dir / "ckpt.pt"
    if args.resume:
        if not ckpt_path.exists():
            raise SystemExit(f"--resume: no {ckpt_path}")
        ck = torch.load(ckpt_path, map_location="cpu")
        if ck["config"] != cfg.to_dict():
            raise SystemExit(f"--resume: checkpoint config {ck['config']} differs from {cfg.to_dict()}")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        start = ck["step"]
        print(f"resumed from {ckpt_path} at step {start}", file=sys.stderr)
    else:
        with open(run_dir / "args.json", "w") as f:
            json.dump(vars(args), f, indent=2)

    print(f"{cfg.architecture}: {count_params(model) / 1e6:.2f}M params, context {cfg.context}, "
          f"{len(train_data):,} train / {len(val_data):,} val tokens, "
          f"{args.batch_size}x{args.grad_accum}x{seq_len} tokens/step", file=sys.stderr)

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)
    model.train()
    t0, tok_count = time.time(), 0
    stop = min(args.steps, args.stop_at or args.steps)
    for step in range(start, stop):
        lr = lr_at(step, args)
        for group in opt.param_groups:
            group["lr"] = lr
        torch.manual_seed(args.seed * 1_000_003 + step)  # dropout noise, stateless for resume
        loss_sum = 0.0
        for micro in range(args.grad_accum):
            x, y = get_batch(train_data, args.batch_size, seq_len, args.seed, step * args.grad_accum + micro)
            with autocast:
                logits = model(x)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
            (loss / args.grad_accum).backward()
            loss_sum += loss.item() / args.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip).item()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tok_count += args.batch_size * args.grad_accum * seq_len

        done = step + 1
        if done % args.log_every == 0 or done == stop:
            dt = time.time() - t0
            log(run_dir, {"step": done, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm,
                          "tok_per_s": tok_count / dt})
            t0, tok_count = time.time(), 0
        if args.eval_every and (done % args.eval_every == 0 or done == args.steps):
            log(run_dir, {"step": done, "val_loss": quick_val_loss(model, val_data, seq_len, args.eval_windows,
                                                                  args.batch_size)})
        if done % args.save_every == 0 or done == stop:
            save_ckpt(ckpt_path, model, opt, done, cfg)

    if stop < args.steps:
        print(f"stopped at step {stop} of {args.steps}; continue with --resume", file=sys.stderr)
        return model
    model.eval()
    out = export_checkpoint(model, run_dir / "final", tokenizer=args.tokenizer,
                            metadata={"steps": args.steps, "train": args.train})
    ppl = perplexity(model, val_data, context=args.eval_context or cfg.context, stride=args.eval_stride,
                     byte_lengths=token_byte_lengths(tok))
    # peak memory of this process (ru_maxrss is in KiB on Linux), for comparing architectures
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    log(run_dir, {"step": args.steps, "split": "valid", **ppl, "peak_rss_bytes": peak})
    print(f"exported {out}", file=sys.stderr)
    return model


def parser():
    data = DEFAULT_OUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = ap.add_argument
    a("--run-dir", required=True)
    a("--resume", action="store_true", help="continue the run in --run-dir (its args.json is reused)")
    a("--arch", choices=["cst", "transformer", "top-down", "bottom-up"], default="cst",
      help="cst-decoder, transformer-decoder, or a multi-scale decoder (top-down-decoder, bottom-up-decoder)")
    # data
    a("--train", default=str(data / "kjv" / "train.txt"))
    a("--valid", default=str(data / "kjv" / "valid.txt"))
    a("--extra", default=None, help="extra training records separated by '%%' lines, e.g. data/fortunes/fortunes.txt")
    a("--tokenizer", default=str(data / "tokenizer.json"))
    # model
    a("--d-model", type=int, default=256)
    a("--n-layers", type=int, default=6)
    a("--n-heads", type=int, default=4)
    a("--d-ff", type=int, default=1024)
    a("--activation", choices=["gelu", "gelu_tanh"], default="gelu")
    a("--tie-embeddings", action="store_true")
    a("--slice-length", type=int, default=32)
    a("--extension-ratio", type=int, default=2)
    a("--max-slices", type=int, default=32)
    a("--separate-global", action="store_true", help="own gq/gk/gv projections (shared_local_global false)")
    a("--max-positions", type=int, default=1024, help="context of transformer, top-down and bottom-up")
    a("--layers-per-scale", default="4,2", help="top-down/bottom-up: blocks per scale, finest first (its length is S)")
    a("--pool-factor", type=int, default=4, help="top-down/bottom-up: k, scale s has blocks of k^s tokens")
    a("--agg-layers", type=int, default=1, help="bottom-up: token-level blocks after the aggregation")
    a("--dropout", type=float, default=0.1)
    # optimisation
    a("--steps", type=int, default=4000)
    a("--stop-at", type=int, default=None, help="save and exit after this step (train in chunks; --resume later)")
    a("--batch-size", type=int, default=4)
    a("--grad-accum", type=int, default=1)
    a("--seq-len", type=int, default=None, help="training window (default: the model context)")
    a("--lr", type=float, default=1e-3)
    a("--min-lr", type=float, default=1e-4)
    a("--warmup", type=int, default=200)
    a("--weight-decay", type=float, default=0.1)
    a("--grad-clip", type=float, default=1.0)
    a("--bf16", action="store_true", help="bf16 autocast (only faster on CPUs with AVX512-BF16/AMX)")
    a("--seed", type=int, default=1337)
    a("--threads", type=int, default=None)
    # logging / eval
    a("--log-every", type=int, default=10)
    a("--eval-every", type=int, default=250)
    a("--eval-windows", type=int, default=16)
    a("--save-every", type=int, default=250)
    a("--eval-context", type=int, default=None, help="final perplexity window (default: model context)")
    a("--eval-stride", type=int, default=None, help="final perplexity stride (default: context-1)")
    return ap


def parse_args(argv=None):
    ap = parser()
    args = ap.parse_args(argv)
    if args.resume:
        # everything comes from the run's args.json except flags given explicitly now
        saved_path = Path(args.run_dir) / "args.json"
        if not saved_path.exists():
            ap.error(f"--resume: no {saved_path}")
        for action in ap._actions:
            action.default = argparse.SUPPRESS
        given = vars(ap.parse_args(argv))
        saved = json.loads(saved_path.read_text())
        saved["stop_at"] = None  # a chunk limit applies to one invocation only
        args = argparse.Namespace(**{**saved, **given})
    return args


def main(argv=None):
    train(parse_args(argv))


if __name__ == "__main__":
    main()
