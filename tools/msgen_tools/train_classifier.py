"""Train and compare text classifiers on the fortune-category data set.

    python -m msgen_tools.train_classifier alpha [--alpha 0.5 --n-heads 10 --n-layers 3]
    python -m msgen_tools.train_classifier embed              # PPMI-SVD token embeddings
    python -m msgen_tools.train_classifier train --arch mstrans --run-dir DIR --seed 1 [flags]
    python -m msgen_tools.train_classifier train --run-dir DIR --resume
    python -m msgen_tools.train_classifier pretrain --run-dir DIR   # masked-LM encoder pretraining
    python -m msgen_tools.train_classifier bow --run-dir DIR
    python -m msgen_tools.train_classifier report --runs tools/runs/mstrans-fortunes

Architectures (--arch):

    mstrans      MS-Trans encoder, DESIGN §3 (models.MSTransEncoder): heads per scale
                 from the alpha rule over --scales; exportable for msgen
    single       the paper's single-scale ablation: every head at --single-scale
                 (same class, same export)
    transformer  pre-norm Transformer encoder of the same width/depth/heads: full
                 bidirectional attention + GELU feed-forward (--ffn, default 4*d),
                 learned absolute positions (or --positions none), final LayerNorm,
                 the same [CLS] + max-pool sentence vector and MLP head. Saved as a
                 plain PyTorch state dict (msgen cannot run it)
    bow          (the `bow` command) bag-of-words multinomial logistic regression:
                 lower-cased word uni+bigrams, sublinear tf-idf, L2 penalty chosen
                 on validation accuracy

All neural runs share one recipe: AdamW, linear warmup then cosine decay over
--epochs, gradient clipping, dropout (optionally word/embedding/head dropout, label
smoothing); after every epoch the validation accuracy is measured and the best
epoch's weights are kept (ties: lower validation loss); --patience can stop a run
early. Token embeddings can start from `embed` (--init-embed, --freeze-embed) or a
`pretrain` run (--init-from); --flatten-prob trains on whitespace-flattened text too.
Each epoch's batches, dropout noise and augmentation depend only on (seed, epoch),
and ckpt.pt is written after every epoch, so `--resume` continues a run exactly.
Unlabeled text (for `embed`/`pretrain`) never includes a validation or test text.

A run dir gets args.json, log.jsonl, ckpt.pt (deleted when done unless --keep-ckpt),
result.json (validation/test accuracy, also on whitespace-flattened text, parameters,
epochs, wall time) and, for mstrans/single, final/ (config.json + model.safetensors +
tokenizer.json, §4) for `msgen convert`. `report` gathers every */result.json under
--runs into results.json and copies the MS-Trans run with the best robust validation
accuracy (mean of original and flattened text) to <runs>/final/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import time
import types
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from . import tokenizer as tk
from .corpus import fortunes as all_fortunes, read_fortunes
from .export import export_checkpoint
from .fortunes_dataset import CLS, DEFAULT_OUT as DATA, dedup_key, read_jsonl
from .models import (Classifier, ModelConfig, MSTransEncoder, alpha_rule, count_params, layer_scales_from_alpha,
                     merge_heads, parse_scale, resolve_scale, split_heads)

RUNS = Path(__file__).resolve().parent.parent / "runs" / "mstrans-fortunes"
PAPER_SCALES = [1, 3, "N/16", "N/8", "N/4"]  # the paper's candidates for SST / MTL-16 / SNLI

# -----------------------------------------------------------------------------
# data


def flatten_ws(text: str) -> str:
    """Whitespace runs (newlines, tabs, indentation) -> one space."""
    return " ".join(text.split())


def encode_split(tok, rows, labels, max_tokens: int, flatten: bool = False):
    """(list of id lists, each 1..max_tokens long, label index array). Longer texts keep
    their first max_tokens tokens (as truncate_for_encoder does at run time)."""
    texts = [flatten_ws(r["text"]) if flatten else r["text"] for r in rows]
    seqs = [e.ids[:max_tokens] for e in tok.encode_batch(texts)]
    if any(len(s) == 0 for s in seqs):
        raise ValueError("empty text in the data set")
    index = {name: i for i, name in enumerate(labels)}
    return seqs, np.array([index[r["label"]] for r in rows], dtype=np.int64)


def make_batches(lengths, batch_size: int, seed: int | None = None, epoch: int = 0) -> list[np.ndarray]:
    """Index batches. Training (seed given): a permutation that depends only on
    (seed, epoch), cut into pools of 50 batches, each pool sorted by length (little
    padding), then the batches shuffled. Evaluation (seed None): by length, in order."""
    lengths = np.asarray(lengths)
    if seed is None:
        order = np.argsort(lengths, kind="stable")
        return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    pool = 50 * batch_size
    out = []
    for i in range(0, len(perm), pool):
        chunk = perm[i: i + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        out += [chunk[j: j + batch_size] for j in range(0, len(chunk), batch_size)]
    return [out[k] for k in rng.permutation(len(out))]


def collate(seqs, idx):
    """Right-padded ids [B, T] (pad 0, never attended) and lengths [B] without [CLS]."""
    lens = [len(seqs[i]) for i in idx]
    ids = torch.zeros(len(idx), max(lens), dtype=torch.long)
    for row, i in enumerate(idx):
        ids[row, : lens[row]] = torch.as_tensor(seqs[i])
    return ids, torch.tensor(lens, dtype=torch.long)


# -----------------------------------------------------------------------------
# models


def fast_msa_forward(self, x, n):
    """MultiScaleSelfAttention.forward with the same mask, through PyTorch's fused
    scaled_dot_product_attention (about 2x faster on CPU, equal to 1e-6; checked by
    the tests). Bound onto the attention modules of the training model only."""
    S = x.shape[1]
    half = torch.tensor([[(resolve_scale(s, int(nb)) - 1) // 2 for s in self.scales] for nb in n.tolist()])
    i = torch.arange(S).view(S, 1)
    j = torch.arange(S).view(1, S)
    mask = ((i - j).abs() <= half[:, :, None, None]) & (j < n.view(-1, 1, 1, 1))
    mask = mask | ((i >= n.view(-1, 1, 1, 1)) & (j == 0))  # padded query rows look at [CLS]
    q, k, v = (split_heads(p(x), self.n_heads) for p in (self.q_proj, self.k_proj, self.v_proj))
    return self.o_proj(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))


def use_fast_attention(model):
    for layer in model.layers:
        layer.attn.forward = types.MethodType(fast_msa_forward, layer.attn)
    return model


def add_regularisers(model, word_dropout: float = 0.0, embed_dropout: float = 0.0, head_dropout: float = 0.0):
    """Training-only noise attached with hooks, so the forward pass (and the weights'
    names) stay exactly those of the exported model; all hooks are identities in eval.
    word_dropout zeroes whole token vectors (never [CLS] at position 0), embed_dropout is
    element dropout on the embeddings, head_dropout is applied to the sentence vector
    and to the classifier's hidden layer."""

    def embed_hook(module, inputs, out):
        if not model.training:
            return out
        if word_dropout > 0:
            keep = torch.rand(out.shape[:2], device=out.device) >= word_dropout
            keep[:, 0] = True
            out = out * keep.unsqueeze(-1) / (1 - word_dropout)
        return F.dropout(out, embed_dropout, True) if embed_dropout > 0 else out

    def head_in(module, inputs):
        return (F.dropout(inputs[0], head_dropout, model.training),)

    def head_hidden(module, inputs, out):  # dropout before ReLU == dropout after ReLU
        return F.dropout(out, head_dropout, model.training)

    model.embed.register_forward_hook(embed_hook)
    if head_dropout > 0:
        model.classifier.fc1.register_forward_pre_hook(head_in)
        model.classifier.fc1.register_forward_hook(head_hidden)
    return model


class EncoderBlock(nn.Module):
    """Pre-norm Transformer encoder layer: full (bidirectional) attention + GELU MLP."""

    def __init__(self, d: int, n_heads: int, ffn: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, h, key_ok):
        B, S, D = h.shape
        x = self.norm1(h)
        q, k, v = (p(x).view(B, S, self.n_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_ok)  # scale 1/sqrt(d_head)
        h = h + self.drop(self.o_proj(a.transpose(1, 2).reshape(B, S, D)))
        return h + self.drop(self.fc2(F.gelu(self.fc1(self.norm2(h)))))


class TransformerEncoderClassifier(nn.Module):
    """Baseline (c): same interface as MSTransEncoder, forward(ids, lengths) -> logits."""

    def __init__(self, cfg: ModelConfig, ffn: int, positions: str = "learned", dropout: float = 0.0):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_length, cfg.d_model) if positions == "learned" else None
        self.layers = nn.ModuleList(EncoderBlock(cfg.d_model, cfg.n_heads, ffn, dropout) for _ in range(cfg.n_layers))
        self.norm_f = nn.LayerNorm(cfg.d_model)
        self.classifier = Classifier(cfg)
        for name, p in self.named_parameters():  # GPT-2 style init: pre-norm trains best with it
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "norm" in name:
                nn.init.ones_(p)
            elif name.startswith(("embed", "pos", "layers")):
                nn.init.normal_(p, 0.0, 0.02 / (math.sqrt(2 * cfg.n_layers) if name.endswith(("o_proj.weight", "fc2.weight")) else 1))

    def forward(self, ids, lengths=None):
        B, n_tok = ids.shape
        if lengths is None:
            lengths = torch.full((B,), n_tok, dtype=torch.long)
        cls = torch.full((B, 1), self.cfg.cls_token_id, dtype=ids.dtype)
        x = self.embed(torch.cat([cls, ids], 1))
        S = x.shape[1]
        if self.pos is not None:
            x = x + self.pos.weight[:S]
        n = lengths + 1
        j = torch.arange(S).view(1, -1)
        key_ok = (j < n.view(-1, 1)).view(B, 1, 1, S)
        for layer in self.layers:
            x = layer(x, key_ok)
        x = self.norm_f(x)
        real = ((j >= 1) & (j < n.view(-1, 1))).unsqueeze(-1)
        pooled = x.masked_fill(~real, float("-inf")).amax(1)
        return self.classifier(torch.cat([x[:, 0], pooled], -1))


def scales_arg(text: str) -> list:
    out = []
    for s in text.split(","):
        s = s.strip()
        v = int(s) if s.isdigit() else s
        parse_scale(v)
        out.append(v)
    return out


def layer_scales_for(args) -> list[list]:
    if args.arch == "single":
        s = scales_arg(str(args.single_scale))[0]
        return [[s] * args.n_heads for _ in range(args.n_layers)]
    return layer_scales_from_alpha(args.alpha, scales_arg(args.scales), args.n_heads, args.n_layers)


def build(args, vocab_size: int, cls_id: int, labels: list[str]):
    base = dict(architecture="ms-trans-encoder", vocab_size=vocab_size, d_model=args.d_model,
                n_layers=args.n_layers, n_heads=args.n_heads, d_ff=args.d_ff, labels=list(labels),
                max_length=args.max_length, cls_token_id=cls_id)
    if args.arch == "transformer":
        cfg = ModelConfig(layer_scales=[[1] * args.n_heads] * args.n_layers, **base)  # scales unused
        return TransformerEncoderClassifier(cfg, args.ffn or 4 * args.d_model, args.positions, args.dropout)
    cfg = ModelConfig(layer_scales=layer_scales_for(args), **base)
    cfg.validate()
    model = use_fast_attention(MSTransEncoder(cfg, dropout=args.dropout))
    return add_regularisers(model, args.word_dropout, args.embed_dropout, args.head_dropout)


# -----------------------------------------------------------------------------
# alpha tables


def alpha_table(alpha, scales, n_heads, n_layers) -> str:
    rows = alpha_rule(alpha, scales, n_heads, n_layers)
    head = f"alpha={alpha}, {n_heads} heads, {n_layers} layers, scales {scales}"
    lines = [head, "  layer  " + "  ".join(f"{str(s):>5}" for s in scales)]
    for l, r in enumerate(rows, 1):
        lines.append(f"  {l:>5}  " + "  ".join(f"{c:>5}" for c in r))
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# training


@torch.no_grad()
def evaluate(model, seqs, y, batch_size: int = 128):
    """(accuracy, mean cross-entropy, predictions)."""
    model.eval()
    preds = np.zeros(len(seqs), dtype=np.int64)
    loss = 0.0
    for idx in make_batches([len(s) for s in seqs], batch_size):
        ids, lens = collate(seqs, idx)
        logits = model(ids, lens)
        loss += F.cross_entropy(logits, torch.from_numpy(y[idx]), reduction="sum").item()
        preds[idx] = logits.argmax(-1).numpy()
    return float((preds == y).mean()), loss / len(seqs), preds


def lr_at(step: int, total: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = (step - args.warmup) / max(1, total - args.warmup)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * min(frac, 1.0)))


def make_optimizer(model, args):
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)


def log(run_dir: Path, rec: dict, quiet: bool = False):
    if not quiet:
        print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rec.items()), flush=True)
    with open(run_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")


def load_data(args):
    tok = tk.load(args.tokenizer)
    cls_id = tok.token_to_id(CLS)
    if cls_id is None:
        raise SystemExit(f"{args.tokenizer} has no {CLS} token")
    rows = {s: read_jsonl(Path(args.data) / f"{s}.jsonl") for s in ("train", "valid", "test")}
    labels = sorted({r["label"] for r in rows["train"]})
    data = {s: encode_split(tok, r, labels, args.max_length - 1, args.flatten) for s, r in rows.items()}
    # the splits as `msgen classify` sees them when each stdin line is an input
    for split in ("train", "valid", "test"):
        data[f"{split}_flat"] = encode_split(tok, rows[split], labels, args.max_length - 1, flatten=True)
    return tok, cls_id, labels, data


def init_embeddings(model, path: str, std: float | None = None):
    """Copy token embeddings from a checkpoint trained with the same tokenizer
    (a safetensors/pt file or a checkpoint dir; tensor `embed.weight`), rescaled to
    overall standard deviation `std` if given (e.g. 0.02 for the Transformer baseline,
    whose learned positions start at that scale)."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    if p.suffix == ".safetensors":
        w = load_file(str(p))["embed.weight"]
    else:
        w = torch.load(p, map_location="cpu")["embed.weight"]
    if w.shape != model.embed.weight.shape:
        raise SystemExit(f"--init-embed: {tuple(w.shape)} != {tuple(model.embed.weight.shape)}")
    if std is not None:
        w = w * (std / w.std())
    with torch.no_grad():
        model.embed.weight.copy_(w)


def init_from_pretrained(model, run_dir: str):
    """Load embed.* and layers.* from a `pretrain` run (encoder.safetensors); the
    classifier stays freshly initialised. The encoder shape and scales must match."""
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "encoder.json").read_text())
    mine = {k: getattr(model.cfg, k) for k in ("vocab_size", "d_model", "n_layers", "n_heads", "layer_scales",
                                               "max_length", "cls_token_id")}
    theirs = {k: meta["config"][k] for k in mine}
    if mine != theirs:
        raise SystemExit(f"--init-from {run_dir}: encoder {theirs} does not match the model {mine}")
    missing, unexpected = model.load_state_dict(load_file(str(run_dir / "encoder.safetensors")), strict=False)
    if unexpected or any(not k.startswith("classifier.") for k in missing):
        raise SystemExit(f"--init-from {run_dir}: missing {missing}, unexpected {unexpected}")


def start_or_resume(run_dir: Path, args, fresh: dict, opt, **modules) -> dict:
    """With --resume, loads run_dir/ckpt.pt into `modules` (by name) and `opt` and returns
    its training state; otherwise starts a new log, saves the arguments, returns `fresh`."""
    ckpt_path = run_dir / "ckpt.pt"
    if not args.resume:
        (run_dir / "log.jsonl").unlink(missing_ok=True)
        with open(run_dir / "args.json", "w") as f:
            json.dump(vars(args), f, indent=2)
        return fresh
    if not ckpt_path.exists():
        raise SystemExit(f"--resume: no {ckpt_path}")
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # never runs code from the file
    for name, module in modules.items():
        module.load_state_dict(ck[name])
    opt.load_state_dict(ck["opt"])
    print(f"resumed {run_dir} after epoch {ck['state']['epoch']}", file=sys.stderr)
    return ck["state"]


def train(args):
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.time()
    tok, cls_id, labels, data = load_data(args)
    (Xtr, ytr), (Xva, yva), (Xte, yte) = data["train"], data["valid"], data["test"]
    torch.manual_seed(args.seed)
    model = build(args, tok.get_vocab_size(), cls_id, labels)
    if args.init_embed:
        init_embeddings(model, args.init_embed, args.init_embed_std)
    if args.init_from:
        init_from_pretrained(model, args.init_from)
    if args.freeze_embed:
        model.embed.weight.requires_grad_(False)
    opt = make_optimizer(model, args)
    steps_per_epoch = len(make_batches([len(s) for s in Xtr], args.batch_size, args.seed, 0))
    total = steps_per_epoch * args.epochs

    ckpt_path = run_dir / "ckpt.pt"
    state = start_or_resume(run_dir, args, {"epoch": 0, "best": None, "history": [], "wall": 0.0}, opt, model=model)

    n_params = count_params(model)
    if args.arch != "transformer":
        cfg = model.cfg
        if args.arch == "mstrans":
            print(alpha_table(args.alpha, scales_arg(args.scales), args.n_heads, args.n_layers), file=sys.stderr)
        print(f"layer_scales: {cfg.layer_scales}", file=sys.stderr)
    print(f"{args.arch}: {n_params:,} params, {len(Xtr)} train / {len(Xva)} valid / {len(Xte)} test, "
          f"{steps_per_epoch} steps/epoch", file=sys.stderr)

    t0 = time.time() - state["wall"]
    stop_epoch = min(args.epochs, args.stop_at or args.epochs)
    for epoch in range(state["epoch"], stop_epoch):
        model.train()
        torch.manual_seed(args.seed * 1_000_003 + epoch)  # dropout noise, stateless for resume
        loss_sum, n_seen = 0.0, 0
        Xtr = data["train"][0]
        if args.flatten_prob > 0:  # whitespace augmentation: this epoch's choice of text form
            flat = np.random.default_rng([args.seed, epoch, 7]).random(len(Xtr)) < args.flatten_prob
            Xtr = [f if c else o for o, f, c in zip(Xtr, data["train_flat"][0], flat)]
        for b, idx in enumerate(make_batches([len(s) for s in Xtr], args.batch_size, args.seed, epoch)):
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch * steps_per_epoch + b, total, args)
            ids, lens = collate(Xtr, idx)
            logits = model(ids, lens)
            loss = F.cross_entropy(logits, torch.from_numpy(ytr[idx]), label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            opt.step()
            loss_sum += loss.item() * len(idx)
            n_seen += len(idx)
        acc, vloss, _ = evaluate(model, Xva, yva)
        rec = {"epoch": epoch + 1, "train_loss": loss_sum / n_seen, "valid_loss": vloss, "valid_acc": acc,
               "seconds": time.time() - t0}
        state["history"].append(rec)
        best = state["best"]
        if best is None or (acc, -vloss) > (best["valid_acc"], -best["valid_loss"]):
            state["best"] = {"epoch": epoch + 1, "valid_acc": acc, "valid_loss": vloss,
                             "model": {k: v.clone() for k, v in model.state_dict().items()}}
        state["epoch"] = epoch + 1
        log(run_dir, rec, args.quiet)
        state["wall"] = time.time() - t0
        done = state["epoch"] - state["best"]["epoch"] >= args.patience or state["epoch"] == args.epochs
        if done:
            break
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state}, ckpt_path.with_suffix(".tmp"))
        os.replace(ckpt_path.with_suffix(".tmp"), ckpt_path)
    else:
        if stop_epoch < args.epochs:
            print(f"stopped after epoch {stop_epoch}; continue with --resume", file=sys.stderr)
            return None

    model.load_state_dict(state["best"]["model"])
    va_acc, va_loss, _ = evaluate(model, Xva, yva)
    te_acc, te_loss, te_pred = evaluate(model, Xte, yte)
    flat_acc = evaluate(model, *data["test_flat"])[0]
    flat_va_acc = evaluate(model, *data["valid_flat"])[0]
    result = {"arch": args.arch, "tag": args.tag or args.arch, "seed": args.seed, "params": n_params,
              "valid_acc": va_acc, "test_acc": te_acc, "valid_loss": va_loss, "test_loss": te_loss,
              "valid_acc_flattened": flat_va_acc, "test_acc_flattened": flat_acc,
              "best_epoch": state["best"]["epoch"], "epochs_run": state["epoch"], "max_epochs": args.epochs,
              "wall_seconds": round(state["wall"], 1), "total_seconds": round(time.time() - t_start, 1),
              "threads": torch.get_num_threads(), "labels": labels,
              "test_confusion": confusion(yte, te_pred, len(labels)), "args": vars(args)}
    if args.arch != "transformer":
        result["layer_scales"] = model.cfg.layer_scales
        export_checkpoint(model, run_dir / "final", tokenizer=args.tokenizer,
                          metadata={"arch": args.arch, "seed": args.seed, "best_epoch": state["best"]["epoch"],
                                    "valid_acc": va_acc, "test_acc": te_acc, "flatten_whitespace": args.flatten})
    else:
        torch.save({"model": model.state_dict(), "config": model.cfg.to_dict(), "ffn": args.ffn or 4 * args.d_model,
                    "positions": args.positions}, run_dir / "model.pt")
    with open(run_dir / "result.json", "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    if not args.keep_ckpt:
        ckpt_path.unlink(missing_ok=True)
    print(f"{args.tag or args.arch} seed {args.seed}: best epoch {state['best']['epoch']}/{state['epoch']}, "
          f"valid {va_acc:.4f}, test {te_acc:.4f}, {state['wall']:.0f}s", file=sys.stderr)
    return result


def confusion(y, pred, k) -> list[list[int]]:
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (y, pred), 1)
    return m.tolist()


# -----------------------------------------------------------------------------
# masked-LM pretraining of the encoder on unlabeled fortunes


MASK_ID = tk.EOS_ID  # "<|endoftext|>" never occurs in classifier input; it serves as [MASK]


def unlabeled_texts(data_dir, path=None) -> list[str]:
    """Every fortune of the installed collection (corpus.fortunes(): all files but
    ascii-art and translate-me, ~15k records), or the "%"-separated records of `path`,
    except the texts of the validation and test splits: pretraining never reads
    held-out text."""
    held = {dedup_key(r["text"]) for s in ("valid", "test") for r in read_jsonl(Path(data_dir) / f"{s}.jsonl")}
    texts = read_fortunes(path) if path else all_fortunes()
    return [t for t in texts if dedup_key(t) not in held]


def chunk_ids(tok, texts, max_tokens: int, min_tokens: int = 4) -> list[list[int]]:
    """Each text's ids cut into pieces of at most max_tokens (nothing is thrown away
    but pieces shorter than min_tokens)."""
    out = []
    for e in tok.encode_batch(texts):
        out += [e.ids[i: i + max_tokens] for i in range(0, len(e.ids), max_tokens)
                if len(e.ids[i: i + max_tokens]) >= min_tokens]
    return out


def encode_hidden(model, ids, lengths):
    """The encoder's last hidden states [B, 1+T, D] (MSTransEncoder.forward without the head)."""
    cls = torch.full((ids.shape[0], 1), model.cfg.cls_token_id, dtype=ids.dtype)
    x = model.embed(torch.cat([cls, ids], 1))
    n = lengths + 1
    for layer in model.layers:
        x = layer(x, n)
    return x


class MLMHead(nn.Module):
    """BERT's: dense + GELU + LayerNorm, then the (tied) embedding matrix + bias."""

    def __init__(self, d: int, vocab: int):
        super().__init__()
        self.dense, self.norm = nn.Linear(d, d), nn.LayerNorm(d)
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, h, embed_weight):
        return F.linear(self.norm(F.gelu(self.dense(h))), embed_weight, self.bias)


def mask_tokens(ids, lengths, p: float, vocab: int, gen=None):
    """BERT masking of the real tokens: p of them are targets; of those 80% become
    MASK_ID, 10% a random ordinary token, 10% stay. Returns (inputs, target mask)."""
    real = torch.arange(ids.shape[1]).view(1, -1) < lengths.view(-1, 1)
    target = (torch.rand(ids.shape, generator=gen) < p) & real
    if not target.any():
        target[0, 0] = True
    r = torch.rand(ids.shape, generator=gen)
    inputs = ids.clone()
    inputs[target & (r < 0.8)] = MASK_ID
    rnd = target & (r >= 0.8) & (r < 0.9)
    inputs[rnd] = torch.randint(2, vocab, (int(rnd.sum()),), generator=gen)
    return inputs, target


def mlm_loss(model, head, ids, lengths, p, gen=None):
    inputs, target = mask_tokens(ids, lengths, p, model.cfg.vocab_size, gen)
    h = encode_hidden(model, inputs, lengths)[:, 1:]
    logits = head(h[target], model.embed.weight)
    y = ids[target]
    return F.cross_entropy(logits, y), (logits.argmax(-1) == y).float().mean().item(), len(y)


@torch.no_grad()
def mlm_eval(model, head, seqs, p, batch_size=128):
    model.eval()
    head.eval()
    gen = torch.Generator().manual_seed(0)  # the same masks every time
    tot, acc, n = 0.0, 0.0, 0
    for idx in make_batches([len(s) for s in seqs], batch_size):
        ids, lens = collate(seqs, idx)
        loss, a, m = mlm_loss(model, head, ids, lens, p, gen)
        tot, acc, n = tot + loss.item() * m, acc + a * m, n + m
    return tot / n, acc / n


def pretrain(args):
    """Masked-LM pretraining of embed + layers; writes encoder.safetensors/.json."""
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.time()
    tok = tk.load(args.tokenizer)
    cls_id = tok.token_to_id(CLS)
    labels = sorted({r["label"] for r in read_jsonl(Path(args.data) / "train.jsonl")})
    if args.arch == "transformer":
        raise SystemExit("pretrain: only --arch mstrans or single")
    texts = unlabeled_texts(args.data, args.unlabeled)
    seqs = chunk_ids(tok, texts, args.max_length - 1)
    held = seqs[::50]  # 2% for the masked-LM validation loss
    seqs = [s for i, s in enumerate(seqs) if i % 50]
    torch.manual_seed(args.seed)
    model = build(args, tok.get_vocab_size(), cls_id, labels)
    head = MLMHead(args.d_model, tok.get_vocab_size())
    body = [p for n, p in model.named_parameters() if not n.startswith("classifier.")]
    params = body + list(head.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}], lr=args.lr)
    steps_per_epoch = len(make_batches([len(s) for s in seqs], args.batch_size, args.seed, 0))
    total = steps_per_epoch * args.epochs
    ckpt_path = run_dir / "ckpt.pt"
    state = start_or_resume(run_dir, args, {"epoch": 0, "wall": 0.0, "history": []}, opt, model=model, head=head)
    print(f"pretrain: {len(texts):,} texts -> {len(seqs):,} pieces / {sum(map(len, seqs)):,} tokens "
          f"(+{len(held):,} held out), {steps_per_epoch} steps/epoch", file=sys.stderr)
    t0 = time.time() - state["wall"]
    stop = min(args.epochs, args.stop_at or args.epochs)
    for epoch in range(state["epoch"], stop):
        model.train()
        head.train()
        torch.manual_seed(args.seed * 1_000_003 + epoch)  # masks and dropout, stateless for resume
        tot, n = 0.0, 0
        for b, idx in enumerate(make_batches([len(s) for s in seqs], args.batch_size, args.seed, epoch)):
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch * steps_per_epoch + b, total, args)
            ids, lens = collate(seqs, idx)
            loss, _, m = mlm_loss(model, head, ids, lens, args.mask_prob)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
            opt.step()
            tot, n = tot + loss.item() * m, n + m
        vloss, vacc = mlm_eval(model, head, held, args.mask_prob)
        rec = {"epoch": epoch + 1, "train_mlm_loss": tot / n, "valid_mlm_loss": vloss, "valid_mlm_acc": vacc,
               "seconds": time.time() - t0}
        state["history"].append(rec)
        state["epoch"], state["wall"] = epoch + 1, time.time() - t0
        log(run_dir, rec, args.quiet)
        torch.save({"model": model.state_dict(), "head": head.state_dict(), "opt": opt.state_dict(), "state": state},
                   ckpt_path.with_suffix(".tmp"))
        os.replace(ckpt_path.with_suffix(".tmp"), ckpt_path)
    if state["epoch"] < args.epochs:
        print(f"stopped after epoch {state['epoch']}; continue with --resume", file=sys.stderr)
        return None
    enc = {k: v.contiguous().clone() for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    save_file(enc, str(run_dir / "encoder.safetensors"))
    meta = {"config": model.cfg.to_dict(), "texts": len(texts), "pieces": len(seqs),
            "tokens": sum(map(len, seqs)), "epochs": state["epoch"], "wall_seconds": round(state["wall"], 1),
            "total_seconds": round(time.time() - t_start, 1), "history": state["history"]}
    with open(run_dir / "encoder.json", "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    if not args.keep_ckpt:
        ckpt_path.unlink(missing_ok=True)
    print(f"pretrained encoder -> {run_dir / 'encoder.safetensors'} ({state['wall']:.0f}s)", file=sys.stderr)
    return meta


# -----------------------------------------------------------------------------
# count-based token embeddings (PPMI + SVD) from unlabeled fortunes


def ppmi_svd(seqs, vocab: int, dim: int, window: int = 4, cds: float = 0.75, seed: int = 0) -> torch.Tensor:
    """Token vectors from co-occurrence counts (Levy & Goldberg 2014, GloVe's cheap
    cousin): counts within +-window tokens weighted 1/distance, positive PMI with
    context-distribution smoothing cds, truncated SVD, rows U sqrt(S). Each dimension
    is scaled to unit variance (the scale of nn.Embedding's own init); tokens that never
    occur (the special tokens, unused merges) get N(0, 1) rows."""
    flat_w, flat_c, weight = [], [], []
    for s in seqs:
        a = np.asarray(s, dtype=np.int64)
        for d in range(1, window + 1):
            if len(a) > d:
                flat_w += [a[:-d], a[d:]]
                flat_c += [a[d:], a[:-d]]
                weight += [np.full(2 * (len(a) - d), 1.0 / d)]
    w, c = np.concatenate(flat_w), np.concatenate(flat_c)
    counts = np.bincount(w * vocab + c, weights=np.concatenate(weight), minlength=vocab * vocab)
    C = torch.from_numpy(counts.reshape(vocab, vocab))
    total = C.sum()
    pw = C.sum(1) / total
    pc = C.sum(0) ** cds
    pc = pc / pc.sum()
    with np.errstate(divide="ignore"):
        pmi = torch.log(C / total) - torch.log(pw).unsqueeze(1) - torch.log(pc).unsqueeze(0)
    ppmi = torch.nan_to_num(pmi, nan=0.0, neginf=0.0, posinf=0.0).clamp(min=0).float()
    torch.manual_seed(seed)
    U, S, _ = torch.svd_lowrank(ppmi, q=dim + 20, niter=6)
    E = U[:, :dim] * S[:dim].sqrt()
    seen = C.sum(1) > 0
    E = E / E[seen].std(0, keepdim=True)
    g = torch.Generator().manual_seed(seed)
    E[~seen] = torch.randn(int((~seen).sum()), dim, generator=g)
    return E.contiguous()


def embed(args):
    t0 = time.time()
    tok = tk.load(args.tokenizer)
    texts = unlabeled_texts(args.data, args.unlabeled)
    seqs = [e.ids for e in tok.encode_batch(texts)]
    E = ppmi_svd(seqs, tok.get_vocab_size(), args.dim, args.window)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({"embed.weight": E}, str(out))
    print(f"{out}: [{E.shape[0]}, {E.shape[1]}] from {len(texts):,} texts / {sum(map(len, seqs)):,} tokens "
          f"in {time.time() - t0:.1f}s", file=sys.stderr)
    return E


# -----------------------------------------------------------------------------
# bag-of-words logistic regression


WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def bow_tokens(text: str, ngram: int) -> list[str]:
    w = WORD.findall(text.lower())
    out = list(w)
    for n in range(2, ngram + 1):
        out += [" ".join(w[i: i + n]) for i in range(len(w) - n + 1)]
    return out


class TfIdf:
    """Sublinear tf-idf with smoothed idf and L2-normalised rows (sklearn's defaults
    plus sublinear_tf), as a torch sparse matrix."""

    def __init__(self, texts, ngram: int = 2, min_df: int = 2):
        self.ngram = ngram
        df = Counter()
        for t in texts:
            df.update(set(bow_tokens(t, ngram)))
        vocab = sorted(k for k, v in df.items() if v >= min_df)
        self.index = {k: i for i, k in enumerate(vocab)}
        n = len(texts)
        self.idf = torch.tensor([math.log((1 + n) / (1 + df[k])) + 1 for k in vocab], dtype=torch.float64)

    def __call__(self, texts):
        rows, cols, vals = [], [], []
        for r, t in enumerate(texts):
            c = Counter(self.index[w] for w in bow_tokens(t, self.ngram) if w in self.index)
            if not c:
                continue
            ks = sorted(c)
            v = torch.tensor([1 + math.log(c[k]) for k in ks], dtype=torch.float64) * self.idf[ks]
            v = v / v.norm()
            rows += [r] * len(ks)
            cols += ks
            vals += v.tolist()
        return torch.sparse_coo_tensor([rows, cols], vals, (len(texts), len(self.index)), dtype=torch.float64,
                                       check_invariants=True).coalesce()


def fit_logreg(X, y, n_classes: int, C: float, max_iter: int = 300):
    """Multinomial logistic regression, sklearn's objective: C * sum(CE) + ||W||^2 / 2
    (bias unpenalised), minimised with L-BFGS from zero weights (deterministic)."""
    W = torch.zeros(X.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    yt = torch.as_tensor(y)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, tolerance_grad=1e-6, tolerance_change=1e-10,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(torch.sparse.mm(X, W) + b, yt, reduction="sum") + (W * W).sum() / (2 * C)
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach(), b.detach()


def bow(args):
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    rows = {s: read_jsonl(Path(args.data) / f"{s}.jsonl") for s in ("train", "valid", "test")}
    labels = sorted({r["label"] for r in rows["train"]})
    ys = {s: np.array([labels.index(r["label"]) for r in rs]) for s, rs in rows.items()}
    texts = {s: [r["text"] for r in rs] for s, rs in rows.items()}
    vec = TfIdf(texts["train"], ngram=args.ngram, min_df=args.min_df)
    X = {s: vec(t) for s, t in texts.items()}
    grid = []
    for C in args.C:
        W, b = fit_logreg(X["train"], ys["train"], len(labels), C)
        acc = {s: float(((torch.sparse.mm(X[s], W) + b).argmax(-1).numpy() == ys[s]).mean()) for s in X}
        grid.append({"C": C, **{f"{s}_acc": a for s, a in acc.items()}})
        print(f"C {C}: train {acc['train']:.4f} valid {acc['valid']:.4f} test {acc['test']:.4f}", file=sys.stderr)
    best = max(grid, key=lambda g: (g["valid_acc"], -g["C"]))  # ties: the stronger penalty
    W, b = fit_logreg(X["train"], ys["train"], len(labels), best["C"])
    pred = (torch.sparse.mm(X["test"], W) + b).argmax(-1).numpy()
    flat = {s: float(((torch.sparse.mm(vec([flatten_ws(t) for t in texts[s]]), W) + b).argmax(-1).numpy()
                      == ys[s]).mean()) for s in ("valid", "test")}
    result = {"arch": "bow", "tag": "bow-lr", "seed": None, "params": W.numel() + b.numel(),
              "features": len(vec.index), "ngram": args.ngram, "min_df": args.min_df, "C": best["C"],
              "valid_acc": best["valid_acc"], "test_acc": best["test_acc"],
              "valid_acc_flattened": flat["valid"], "test_acc_flattened": flat["test"], "grid": grid,
              "wall_seconds": round(time.time() - t0, 1), "labels": labels,
              "test_confusion": confusion(ys["test"], pred, len(labels)), "args": vars(args)}
    with open(run_dir / "result.json", "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"bow-lr: {len(vec.index):,} features, C {best['C']}: valid {best['valid_acc']:.4f} "
          f"test {best['test_acc']:.4f}, {result['wall_seconds']}s", file=sys.stderr)
    return result


# -----------------------------------------------------------------------------
# report


def load_trained(run_dir: Path):
    """The best-epoch model of a finished neural run (final/ or model.pt)."""
    if (run_dir / "final").exists():
        from .export import load_checkpoint
        return load_checkpoint(run_dir / "final")[0]
    ck = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    model = TransformerEncoderClassifier(ModelConfig.from_dict(ck["config"]), ck["ffn"], ck["positions"])
    model.load_state_dict(ck["model"])
    return model.eval()


def backfill_flattened(path: Path, r: dict) -> dict:
    """Add valid/test accuracy on whitespace-flattened text to a result written before
    train() measured it (scores the saved best-epoch model; nothing is retrained)."""
    if r["arch"] == "bow" or "valid_acc_flattened" in r:
        return r
    a = argparse.Namespace(**r["args"])
    tok, cls_id, labels, data = load_data(a)
    model = load_trained(path.parent)
    r["valid_acc_flattened"] = evaluate(model, *data["valid_flat"])[0]
    r["test_acc_flattened"] = evaluate(model, *data["test_flat"])[0]
    assert abs(evaluate(model, *data["test"])[0] - r["test_acc"]) < 1e-9, f"{path}: saved model != result"
    path.write_text(json.dumps(r, indent=2) + "\n")
    return r


def robust(r: dict) -> float:
    return (r["valid_acc"] + r["valid_acc_flattened"]) / 2


def report(args):
    runs = Path(args.runs)
    results = [backfill_flattened(p, json.loads(p.read_text())) for p in sorted(runs.glob("*/result.json"))]
    if not results:
        raise SystemExit(f"no */result.json under {runs}")
    groups: dict[str, list] = {}
    for r in results:
        groups.setdefault(r["tag"], []).append(r)
    summary = {}
    for tag, rs in groups.items():
        rs.sort(key=lambda r: (r["seed"] is None, r["seed"]))
        summary[tag] = {
            "arch": rs[0]["arch"], "params": rs[0]["params"], "seeds": [r["seed"] for r in rs],
            "valid_acc_mean": float(np.mean([r["valid_acc"] for r in rs])),
            "test_acc_mean": float(np.mean([r["test_acc"] for r in rs])),
            "test_acc_flattened_mean": float(np.mean([r["test_acc_flattened"] for r in rs])),
            "valid_acc_robust_mean": float(np.mean([robust(r) for r in rs])),
            "per_seed": [{k: r.get(k) for k in ("seed", "valid_acc", "test_acc", "valid_acc_flattened",
                                                 "test_acc_flattened", "best_epoch", "epochs_run",
                                                 "max_epochs", "wall_seconds", "threads", "C", "features")
                          if k in r} for r in rs],
            "layer_scales": rs[0].get("layer_scales"),
            "args": {k: v for k, v in rs[0]["args"].items() if k not in ("run_dir", "seed", "resume", "stop_at",
                                                                        "quiet", "keep_ckpt", "command")},
        }
    best = None
    cands = [r for r in results if r["arch"] == "mstrans" and (args.ship_tag is None or r["tag"] == args.ship_tag)]
    if cands:
        # Ship the MS-Trans configuration with the best mean *robust* validation accuracy
        # (the mean of validation accuracy on the texts as they are and on the same texts
        # with whitespace flattened, as `msgen classify` reads stdin lines), and of it the
        # seed with the best robust validation accuracy. Test accuracy is never used.
        tag = max({r["tag"] for r in cands}, key=lambda t: summary[t]["valid_acc_robust_mean"])
        best = max((r for r in cands if r["tag"] == tag), key=lambda r: (robust(r), -r["seed"]))
        src = Path(best["args"]["run_dir"]) / "final"
        dst = runs / "final"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
        print(f"shipped {src} -> {dst} ({tag}, seed {best['seed']}, valid {best['valid_acc']:.4f}, "
              f"test {best['test_acc']:.4f})", file=sys.stderr)
    pretraining = {}
    for p in sorted(runs.glob("*/encoder.json")):
        m = json.loads(p.read_text())
        pretraining[p.parent.name] = {k: m[k] for k in ("texts", "pieces", "tokens", "epochs", "wall_seconds")}
        pretraining[p.parent.name]["last_epoch"] = m["history"][-1]
    out = {"data": str(args.data), "summary": summary, "pretraining": pretraining,
           "ship_rule": "the MS-Trans configuration with the best mean robust validation accuracy (mean of "
                        "validation accuracy on the texts as they are and whitespace-flattened), of it the seed "
                        "with the best robust validation accuracy; test accuracy is never used to choose",
           "shipped": None if best is None else {k: best[k] for k in ("tag", "seed", "valid_acc", "test_acc",
                                                                     "valid_acc_flattened", "test_acc_flattened")}
           | {"run_dir": best["args"]["run_dir"]},
           "runs": results}
    with open(runs / "results.json", "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    w = max(len(t) for t in summary)
    print(f"{'model':<{w}}  {'params':>9}  {'valid':>6}  {'test':>6}  {'v-flat':>6}  {'t-flat':>6}  per-seed test")
    for tag, s in sorted(summary.items(), key=lambda kv: -kv[1]["valid_acc_robust_mean"]):
        per = " ".join(f"{p['test_acc']:.4f}" for p in s["per_seed"])
        vflat = np.mean([p["valid_acc_flattened"] for p in s["per_seed"]])
        print(f"{tag:<{w}}  {s['params']:>9,}  {s['valid_acc_mean']:.4f}  {s['test_acc_mean']:.4f}  {vflat:.4f}  "
              f"{s['test_acc_flattened_mean']:.4f}  {per}")
    return out


# -----------------------------------------------------------------------------
# CLI


def train_parser(sub, name="train", help="train one neural classifier"):
    ap = sub.add_parser(name, help=help)
    a = ap.add_argument
    a("--run-dir", required=True)
    a("--resume", action="store_true", help="continue the run in --run-dir (its args.json is reused)")
    a("--arch", choices=["mstrans", "single", "transformer"], default="mstrans")
    a("--tag", default=None, help="name of the configuration in results.json (default: --arch)")
    a("--data", default=str(DATA))
    a("--tokenizer", default=str(DATA / "tokenizer.json"))
    a("--flatten", action="store_true", help="collapse whitespace runs (newlines, tabs) to one space")
    a("--flatten-prob", type=float, default=0.0,
      help="whitespace augmentation: each epoch, train on the flattened form of each text with this probability")
    a("--max-length", type=int, default=128, help="tokens incl. [CLS]; longer texts are truncated")
    # model
    a("--d-model", type=int, default=120)
    a("--n-layers", type=int, default=3)
    a("--n-heads", type=int, default=10)
    a("--d-ff", type=int, default=240, help="classifier hidden size (config d_ff)")
    a("--alpha", type=float, default=0.5)
    a("--scales", default="1,3,N/16,N/8,N/4", help="candidate scales, small to large")
    a("--single-scale", default="3", help="the scale of every head for --arch single")
    a("--ffn", type=int, default=None, help="transformer feed-forward width (default 4*d_model)")
    a("--positions", choices=["learned", "none"], default="learned", help="transformer input positions")
    a("--init-embed", default=None, help="initialise embed.weight from this checkpoint (same tokenizer)")
    a("--init-embed-std", type=float, default=None, help="rescale the --init-embed matrix to this std")
    a("--freeze-embed", action="store_true", help="keep embed.weight fixed (with --init-embed)")
    a("--init-from", default=None, help="initialise embed and layers from this `pretrain` run dir")
    # regularisation
    a("--dropout", type=float, default=0.1, help="after each attention sublayer (and FFN for transformer)")
    a("--word-dropout", type=float, default=0.0)
    a("--embed-dropout", type=float, default=0.0)
    a("--head-dropout", type=float, default=0.0)
    a("--label-smoothing", type=float, default=0.0)
    a("--weight-decay", type=float, default=0.01)
    # optimisation
    a("--epochs", type=int, default=30)
    a("--patience", type=int, default=1000, help="stop after this many epochs without a better valid acc")
    a("--stop-at", type=int, default=None, help="save and exit after this epoch (train in chunks; --resume)")
    a("--batch-size", type=int, default=32)
    a("--lr", type=float, default=1e-3)
    a("--min-lr", type=float, default=0.0)
    a("--warmup", type=int, default=100)
    a("--grad-clip", type=float, default=1.0)
    a("--seed", type=int, default=1)
    a("--threads", type=int, default=None)
    a("--keep-ckpt", action="store_true")
    a("--quiet", action="store_true")
    return ap


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    tp = train_parser(sub)
    pp = train_parser(sub, "pretrain", "masked-LM pretraining of the encoder on unlabeled fortunes")
    pp.add_argument("--mask-prob", type=float, default=0.15)
    pp.add_argument("--unlabeled", default=None,
                    help="'%%'-separated text records (default: the installed fortunes collection)")
    b = sub.add_parser("bow", help="bag-of-words logistic regression baseline")
    b.add_argument("--run-dir", default=str(RUNS / "bow-lr"))
    b.add_argument("--data", default=str(DATA))
    b.add_argument("--ngram", type=int, default=2)
    b.add_argument("--min-df", type=int, default=2)
    b.add_argument("--C", type=float, nargs="+", default=[1, 3, 10, 30, 100])
    b.add_argument("--threads", type=int, default=None)
    e = sub.add_parser("embed", help="PPMI-SVD token embeddings from unlabeled fortunes (for --init-embed)")
    e.add_argument("--out", default=str(RUNS / "embed-ppmi" / "embed.safetensors"))
    e.add_argument("--data", default=str(DATA))
    e.add_argument("--tokenizer", default=str(DATA / "tokenizer.json"))
    e.add_argument("--unlabeled", default=None)
    e.add_argument("--dim", type=int, default=120)
    e.add_argument("--window", type=int, default=4)
    r = sub.add_parser("report", help="results.json over all runs, ship the best MS-Trans to <runs>/final")
    r.add_argument("--runs", default=str(RUNS))
    r.add_argument("--data", default=str(DATA))
    r.add_argument("--ship-tag", default=None,
                   help="ship this MS-Trans configuration (default: best mean robust validation accuracy)")
    al = sub.add_parser("alpha", help="print the alpha-rule head table")
    al.add_argument("--alpha", type=float, default=0.5)
    al.add_argument("--n-heads", type=int, default=10)
    al.add_argument("--n-layers", type=int, default=3)
    al.add_argument("--scales", default="1,3,N/16,N/8,N/4")
    args = ap.parse_args(argv)
    if args.command in ("train", "pretrain") and args.resume:
        saved_path = Path(args.run_dir) / "args.json"
        if not saved_path.exists():
            ap.error(f"--resume: no {saved_path}")
        for action in (tp if args.command == "train" else pp)._actions:
            action.default = argparse.SUPPRESS
        given = vars(ap.parse_args(argv))
        saved = json.loads(saved_path.read_text())
        saved["stop_at"] = None
        args = argparse.Namespace(**{**saved, **given})
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.command == "train":
        return train(args)
    if args.command == "pretrain":
        return pretrain(args)
    if args.command == "embed":
        return embed(args)
    if args.command == "bow":
        return bow(args)
    if args.command == "report":
        return report(args)
    print(alpha_table(args.alpha, scales_arg(args.scales), args.n_heads, args.n_layers))


if __name__ == "__main__":
    main()
