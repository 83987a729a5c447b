#!/usr/bin/env python3
"""Sentences per second of `msgen classify` against the PyTorch reference, same weights,
one run, and a check that both give the same predictions.

    .venv/bin/python tools/bench_classify.py MODEL.msz CHECKPOINT_DIR SENTENCES.txt \\
        [--msgen .build/release/msgen] [--threads 1] [--batch 64] [--json]

MODEL.msz must be `msgen convert CHECKPOINT_DIR` (f32 for an exact comparison).
SENTENCES.txt holds one text per line; empty lines are skipped, as msgen does.

What is timed, wall clock, tokenization included on both sides:
  msgen      `msgen classify --json` over all sentences on stdin: the whole process
             (start, load, tokenize, classify, print), and the same process on one
             sentence; the difference over N-1 sentences is the steady rate.
  torch x1   MSTransEncoder.forward one sentence at a time (torch.no_grad, eval).
  torch xB   the same in right-padded batches of --batch sentences (lengths given).
Both sides use --threads threads (OpenBLAS / torch intra-op). Model loading is not
timed on the PyTorch side; on the msgen side it is in "total" but not in "steady".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from msgen_tools import tokenizer as tk  # noqa: E402
from msgen_tools.export import load_checkpoint  # noqa: E402


def run_msgen(msgen: str, model: str, lines: list[str], threads: int) -> tuple[float, list[dict], str]:
    data = "".join(s + "\n" for s in lines).encode()
    t0 = time.perf_counter()
    p = subprocess.run([msgen, "classify", "--model", model, "--json", "--threads", str(threads)],
                       input=data, capture_output=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"msgen failed ({p.returncode}): {p.stderr.decode().strip()}")
    out = [json.loads(l) for l in p.stdout.decode().splitlines()]
    if len(out) != len(lines):
        sys.exit(f"msgen printed {len(out)} results for {len(lines)} sentences")
    return dt, out, p.stderr.decode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help=".msz file converted from CHECKPOINT_DIR")
    ap.add_argument("checkpoint", help="checkpoint directory (config.json, model.safetensors, tokenizer.json)")
    ap.add_argument("sentences", help="text file, one sentence per line")
    ap.add_argument("--msgen", default=None, help="msgen binary (default: .build/release/msgen, then .build/debug/msgen)")
    ap.add_argument("--threads", type=int, default=1, help="threads on both sides (default 1)")
    ap.add_argument("--batch", type=int, default=64, help="batch size of the batched PyTorch run (0 = skip it)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the best is reported")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = ap.parse_args()

    root = Path(__file__).resolve().parent.parent
    msgen = args.msgen or next((str(p) for p in (root / ".build/release/msgen", root / ".build/debug/msgen") if p.exists()), None)
    if msgen is None:
        sys.exit("no msgen binary found; build one (swift build -c release) or pass --msgen")
    lines = [l.rstrip("\r") for l in Path(args.sentences).read_text(encoding="utf-8").split("\n")]
    lines = [l for l in lines if l]
    if len(lines) < 2:
        sys.exit("need at least two sentences")
    n = len(lines)

    # --- PyTorch --------------------------------------------------------------
    torch.set_num_threads(args.threads)
    model, cfg = load_checkpoint(args.checkpoint)
    tok = tk.load(Path(args.checkpoint) / "tokenizer.json")
    keep = cfg.max_length - 1
    labels = cfg.labels

    def encode(s: str) -> list[int]:
        ids = tok.encode(s).ids
        if not ids:
            sys.exit(f"a sentence gives no tokens: {s!r}")
        return ids[:keep]

    @torch.no_grad()
    def one_at_a_time() -> list[list[float]]:
        return [torch.softmax(model(torch.tensor([encode(s)]))[0], -1).tolist() for s in lines]

    @torch.no_grad()
    def batched() -> list[list[float]]:
        out = []
        for b in range(0, n, args.batch):
            ids = [encode(s) for s in lines[b:b + args.batch]]
            width = max(map(len, ids))
            x = torch.tensor([i + [0] * (width - len(i)) for i in ids])
            out += torch.softmax(model(x, torch.tensor([len(i) for i in ids])), -1).tolist()
        return out

    def best(f):
        times, result = [], None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            result = f()
            times.append(time.perf_counter() - t0)
        return min(times), result

    torch_1, probs_1 = best(one_at_a_time)
    torch_b, probs_b = best(batched) if args.batch > 0 else (None, None)

    # --- msgen ----------------------------------------------------------------
    msgen_n = min(run_msgen(msgen, args.model, lines, args.threads)[0] for _ in range(args.repeat))
    msgen_1 = min(run_msgen(msgen, args.model, lines[:1], args.threads)[0] for _ in range(args.repeat))
    _, results, stderr = run_msgen(msgen, args.model, lines, args.threads)
    truncated = sum(1 for r in results if r.get("truncated"))

    # --- agreement ------------------------------------------------------------
    def top(p: list[float]) -> str:
        return labels[max(range(len(p)), key=lambda k: (p[k], -k))]

    disagree = [i for i, (r, p) in enumerate(zip(results, probs_1)) if r["label"] != top(p)]
    max_dp = max(abs(r["probs"][lab] - p[k]) for r, p in zip(results, probs_1) for k, lab in enumerate(labels))
    batch_dp = (max(abs(a - b) for pa, pb in zip(probs_1, probs_b) for a, b in zip(pa, pb))
                if probs_b is not None else None)

    steady = (n - 1) / max(msgen_n - msgen_1, 1e-9)
    figures = {
        "sentences": n, "threads": args.threads, "msgen": msgen,
        "msgen_total_s": msgen_n, "msgen_one_sentence_s": msgen_1,
        "msgen_sentences_per_s_total": n / msgen_n, "msgen_sentences_per_s_steady": steady,
        "torch_one_at_a_time_s": torch_1, "torch_sentences_per_s": n / torch_1,
        "torch_batched_s": torch_b, "torch_batched_sentences_per_s": n / torch_b if torch_b else None,
        "ratio_steady_vs_torch": steady / (n / torch_1),
        "ratio_total_vs_torch": (n / msgen_n) / (n / torch_1),
        "ratio_steady_vs_torch_batched": steady / (n / torch_b) if torch_b else None,
        "label_disagreements": len(disagree), "max_abs_prob_diff": max_dp,
        "max_abs_prob_diff_torch_batched_vs_single": batch_dp,
        "truncated_inputs": truncated, "truncation_notes": stderr.count("truncated"),
    }
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"{n} sentences, {args.threads} thread(s), model {args.model} ({cfg.d_model}x{cfg.n_layers} layers, "
              f"{cfg.n_heads} heads, max_length {cfg.max_length}; {truncated} inputs truncated)")
        print(f"  msgen classify      {n / msgen_n:9.1f} sentences/s  whole process {msgen_n:.3f} s "
              f"(one sentence: {msgen_1:.3f} s)")
        print(f"  msgen steady        {steady:9.1f} sentences/s  (N-1 sentences over the time beyond one)")
        print(f"  torch one at a time {n / torch_1:9.1f} sentences/s  {torch_1:.3f} s")
        if torch_b:
            print(f"  torch batch {args.batch:<7d} {n / torch_b:9.1f} sentences/s  {torch_b:.3f} s")
        print(f"  ratio msgen/torch   {figures['ratio_steady_vs_torch']:9.2f}x steady, "
              f"{figures['ratio_total_vs_torch']:.2f}x whole process"
              + (f", {figures['ratio_steady_vs_torch_batched']:.2f}x vs batched torch" if torch_b else ""))
        print(f"  agreement           {n - len(disagree)}/{n} labels equal, max |dp| {max_dp:.2e}"
              + (f" (torch batched vs single {batch_dp:.1e})" if batch_dp is not None else ""))
    if disagree or max_dp > 1e-3:
        for i in disagree[:5]:
            print(f"  disagree on line {i + 1}: msgen {results[i]['label']}, torch {top(probs_1[i])}: {lines[i]!r}",
                  file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
