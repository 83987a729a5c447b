"""msgen CST vs msgen baseline vs the PyTorch reference, measured side by side in one run.

    .venv/bin/python tools/bench_side_by_side.py [--cst-checkpoint DIR] [--text FILE] [--tokens N] [--threads N] [--scoring-only]
    .venv/bin/python tools/bench_side_by_side.py --multiscale [--td-checkpoint DIR] [--bu-checkpoint DIR] [--cst-checkpoint DIR]

--multiscale instead measures the multi-scale decoders (Sources/MSModels/README.md) next to CST and a baseline of the
same size and context (1,024): decode ms/token at depth 256, 512 and at the context, and
the cache bytes held there (see `multiscale` below; the configs are tools/README.md's).

Speed does not depend on the weights' values, so both models are the bundled CST's
shape (d_model 256, 4 layers, 4 heads, d_ff 1024, vocab 4096); the baseline has the same
sizes with learned positions long enough to decode at 8K. Unless --cst-checkpoint names a trained
model, both get random weights. Every figure comes from this run, on this machine:

  scoring   tokens/s of `msgen perplexity` (windows of 1024) vs the PyTorch reference
            on the same weights, windows and text (torch batches 8 windows at a time)
  decode    `msgen bench` ms/token at depths 256 … 8192 for both msgen models
  memory    cache bytes at each depth and peak RSS
  bound     the scoring tokens/s msgen could reach if nothing but its matrix products took
            time: one window's Linear products (QKV, Wo, FFN, LM head) timed through the
            same OpenBLAS, one thread each, as msgen calls them

and it writes tools/figures/decode-vs-context.png (latency and cache against depth).
"""
import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from msgen_tools import tokenizer as tk  # noqa: E402
from msgen_tools.export import export_checkpoint, load_checkpoint  # noqa: E402
from msgen_tools.models import ModelConfig, build_model  # noqa: E402
from msgen_tools.train_lm import perplexity  # noqa: E402

MSGEN = Path(os.environ.get("MSGEN", ROOT / ".build" / "release" / "msgen"))  # MSGEN=… to run another build
DEPTHS = [256, 1024, 2048, 4096, 8192]
SHAPE = dict(vocab_size=4096, d_model=256, n_layers=4, n_heads=4, d_ff=1024, tie_embeddings=True, eos_token_id=0)


def run(args, **kw):
    return subprocess.run([str(MSGEN)] + [str(a) for a in args], check=True, capture_output=True, text=True, **kw)


def make_model(arch: dict, out: Path, tokenizer: Path) -> Path:
    torch.manual_seed(0)
    shape = SHAPE if "n_layers" in arch or arch["architecture"] in ("cst-decoder", "transformer-decoder") else \
        {k: v for k, v in SHAPE.items() if k != "n_layers"}  # §8: the multi-scale decoders have no n_layers
    model = build_model(ModelConfig.from_dict({**shape, **arch}))
    model.init_weights()
    export_checkpoint(model, out, tokenizer=tokenizer)
    run(["convert", out, "-o", out.with_suffix(".msz")])
    return out.with_suffix(".msz")


def score_torch(ckpt: Path, ids, context: int, threads: int) -> dict:
    model, cfg = load_checkpoint(ckpt)
    torch.set_num_threads(threads)
    perplexity(model, ids[: context * 2], context)  # warm up
    t = time.perf_counter()
    r = perplexity(model, ids, context)
    r["seconds"] = time.perf_counter() - t
    return r


def gemm_bound(context: int, threads: int, repetitions: int = 5) -> dict:
    """Scored tokens/s if a window of `context` tokens cost only its Linear products
    (attention's small products and everything else free), timed through the system
    OpenBLAS with one thread, with the beta msgen uses (1: bias or residual already in
    the output; 0: the LM head). `threads` windows run at once in msgen, so the bound is
    `threads` times one thread's; the machine's cores are not always that generous."""
    blas = ctypes.CDLL("libopenblas.so.0")
    blas.openblas_set_num_threads(1)
    f = ctypes.c_float
    blas.cblas_sgemm.argtypes = [ctypes.c_int] * 6 + [f, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                                                      f, ctypes.c_void_p, ctypes.c_int]
    d, ff, v, layers, t = SHAPE["d_model"], SHAPE["d_ff"], SHAPE["vocab_size"], SHAPE["n_layers"], context
    # (rows, in, out, beta) of each product y = x·Wᵀ: QKV, Wo, fc1, fc2 per layer, then the head.
    shapes = [(t, d, 3 * d, 1), (t, d, d, 1), (t, d, ff, 1), (t, ff, d, 1)] * layers + [(t - 1, d, v, 0)]
    bufs = [(torch.randn(m, k), torch.randn(n, k), torch.zeros(m, n)) for m, k, n, _ in shapes]

    def window():
        for (m, k, n, beta), (x, w, y) in zip(shapes, bufs):
            blas.cblas_sgemm(101, 111, 112, m, n, k, 1.0, x.data_ptr(), k, w.data_ptr(), k, float(beta), y.data_ptr(), n)
    window()
    best = float("inf")
    for _ in range(repetitions):
        t0 = time.perf_counter()
        window()
        best = min(best, time.perf_counter() - t0)
    flops = sum(2 * m * k * n for m, k, n, _ in shapes)
    blas.openblas_set_num_threads(os.cpu_count())
    return dict(tps=threads * (context - 1) / best, gflops=flops / best / 1e9, flop_per_token=flops / (context - 1))


def kernels_used() -> tuple:
    """What each side ran: msgen's own kernel level and who runs its matrix products
    (OpenBLAS's sgemm and its core, or msgen's own where that core is narrower than the
    CPU), and PyTorch's CPU capability (its vector kernels) and GEMM backend."""
    j = json.loads(run(["bench", "--context", "16", "--repetitions", "1", "--decode-tokens", "2", "--json"]).stdout)
    gemm = "MKL" if torch.backends.mkl.is_available() else "its own"
    return (f"msgen {j['cpu_kernels']}, products by {j['matrix_products']}; "
            f"PyTorch {torch.__version__} CPU capability {torch.backends.cpu.get_cpu_capability()}, GEMM {gemm}",
            j["matrix_products"].startswith("OpenBLAS"))


def print_scoring(a, scoring: dict):
    print(f"machine: {os.cpu_count()} cores, {a.threads} threads each for msgen and PyTorch; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '')}")
    kernels, blas_products = kernels_used()
    print("kernels:", kernels)
    print(f"\nscoring (perplexity windows of 1024, tokens/s, best of {a.repetitions})")
    for name, s in scoring.items():
        print(f"  {name:9s} msgen {s['msgen_tps']:8.0f}   pytorch {s['torch_tps']:8.0f}   msgen/pytorch {s['msgen_tps'] / s['torch_tps']:.2f}x"
              f"   (ppl msgen {s['msgen_ppl']:.4f}, pytorch {s['torch_ppl']:.4f}, {s['tokens']} tokens)")
    print(f"  msgen cst / msgen baseline: {scoring['cst']['msgen_tps'] / scoring['baseline']['msgen_tps']:.2f}x")
    if not blas_products:
        print("  bound: not measured (it times OpenBLAS's sgemm, which msgen does not run on this CPU)")
        return
    b, torch_tps = gemm_bound(1024, a.threads), scoring["cst"]["torch_tps"]
    print(f"  bound: its Linear products alone ({b['flop_per_token'] / 1e6:.2f} MFLOP/token) run at {b['gflops']:.1f} GFLOP/s"
          f" per thread in OpenBLAS: at most {b['tps']:.0f} tokens/s = {b['tps'] / torch_tps:.2f}x pytorch"
          f" (msgen reaches {scoring['cst']['msgen_tps'] / b['tps']:.0%} of it)")


# The §8 decoders at cst-kjv's size and context (tools/README.md, "The multi-scale decoders"),
# and a baseline of the same shape and context.
MULTISCALE = {
    "top-down": dict(architecture="top-down-decoder", scales=3, pool_factor=4, layers_per_scale=[2, 1, 1], d_ff=896,
                     max_positions=1024),
    "bottom-up": dict(architecture="bottom-up-decoder", scales=3, pool_factor=4, layers_per_scale=[1, 1, 1], agg_layers=1,
                      d_ff=832, max_positions=1024),
    "baseline": dict(architecture="transformer-decoder", max_positions=1024),
    "cst": dict(architecture="cst-decoder", slice_length=16, extension_ratio=3, max_slices=64),
}


def multiscale(a, tok_path: Path, work: Path):
    """Decode ms/token and cache bytes by depth for the §8 decoders, CST and the baseline,
    all of ~4.2 M parameters and context 1,024. A model that cannot pass its context is
    measured last at depth N − decode_tokens·repetitions, so its timed tokens end exactly
    at N and the cache bytes `msgen bench` reports are those at the context."""
    reps, tokens = a.repetitions, a.decode_tokens
    given = {"top-down": a.td_checkpoint, "bottom-up": a.bu_checkpoint, "cst": a.cst_checkpoint}
    rows = {}
    for name, arch in MULTISCALE.items():
        if given.get(name):
            msz = work / f"{name}.msz"
            run(["convert", given[name], "-o", msz])
        else:
            msz = make_model(arch, work / name, tok_path)
        info = json.loads(run(["inspect", "--json", msz]).stdout)
        n = info["config"].get("max_positions") or info["config"]["max_slices"] * info["config"]["slice_length"]
        depths = [256, 512, n - tokens * reps]
        b = json.loads(run(["bench", "--model", msz, "--json", "--repetitions", reps, "--decode-tokens", tokens,
                            "--threads", a.threads, "--context", *depths]).stdout)
        rows[name] = dict(params=info["parameters"], context=n, decode={d["depth"]: d for d in b["decode"]})
    base_at_n = max(d["cache_bytes"] for d in rows["baseline"]["decode"].values())
    print(f"decode (ms/token, median of {reps} × {tokens} tokens; 'at N' = the timed tokens end at the context) and cache")
    print("  model        params   depth    ms/token    cache MB   cache / baseline at N")
    for name, r in rows.items():
        for depth, d in sorted(r["decode"].items()):
            label = "at N" if depth + tokens * reps == r["context"] else f"{depth:5d}"
            print(f"  {name:10s} {r['params'] / 1e6:6.2f}M   {label:>5s}   {d['seconds_per_token']['median'] * 1e3:9.3f}"
                  f"   {d['cache_bytes'] / 1e6:9.2f}   {d['cache_bytes'] / base_at_n:8.3f}")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cst-checkpoint", type=Path, help="a trained CST checkpoint dir (default: random weights)")
    ap.add_argument("--text", type=Path, default=ROOT / "tools" / "data" / "kjv" / "test.txt")
    ap.add_argument("--tokens", type=int, default=30_000, help="score this many tokens of --text")
    ap.add_argument("--plot", type=Path, default=ROOT / "tools" / "figures" / "decode-vs-context.png")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for msgen and for PyTorch alike")
    ap.add_argument("--repetitions", type=int, default=3, help="scoring runs of each side (alternating); the best counts")
    ap.add_argument("--scoring-only", action="store_true", help="skip the decode benchmark and the plot")
    ap.add_argument("--multiscale", action="store_true", help="top-down and bottom-up next to CST and the baseline (decode, cache)")
    ap.add_argument("--td-checkpoint", type=Path, help="--multiscale: a trained top-down checkpoint dir")
    ap.add_argument("--bu-checkpoint", type=Path, help="--multiscale: a trained bottom-up checkpoint dir")
    ap.add_argument("--decode-tokens", type=int, default=32, help="--multiscale: tokens timed per decode run")
    a = ap.parse_args()
    if "MSGEN" not in os.environ:
        subprocess.run(["swift", "build", "-c", "release", "--product", "msgen"], cwd=ROOT, check=True, capture_output=True)
    tok_path = ROOT / "Tests" / "Fixtures" / "tokenizer" / "tokenizer.json"
    if a.multiscale:
        multiscale(a, a.cst_checkpoint / "tokenizer.json" if a.cst_checkpoint else tok_path, Path(tempfile.mkdtemp(prefix="msgen-bench-")))
        return
    if not a.text.exists():
        subprocess.run([sys.executable, "-m", "msgen_tools.corpus"], cwd=ROOT / "tools", check=True)

    work = Path(tempfile.mkdtemp(prefix="msgen-bench-"))
    if a.cst_checkpoint:
        cst_dir = a.cst_checkpoint
        cst = work / "cst.msz"
        run(["convert", cst_dir, "-o", cst])
        tok_path = cst_dir / "tokenizer.json"
    else:
        cst_dir = work / "cst"
        cst = make_model(dict(architecture="cst-decoder", slice_length=16, extension_ratio=3, max_slices=64), cst_dir, tok_path)
    base_dir = work / "baseline"
    base = make_model(dict(architecture="transformer-decoder", max_positions=8192 + 256), base_dir, tok_path)

    # Scoring: the same text, windows and weights in msgen and in PyTorch.
    tok = tk.load(tok_path)
    ids = tok.encode(a.text.read_text(encoding="utf-8")).ids[: a.tokens]
    text_file = work / "text.txt"
    text_file.write_text(tok.decode(ids), encoding="utf-8")
    ids = tok.encode(text_file.read_text(encoding="utf-8")).ids
    scoring = {}
    for name, msz, ckpt in [("cst", cst, cst_dir), ("baseline", base, base_dir)]:
        best = {}
        for _ in range(a.repetitions):  # alternating, best of each: this VM's speed drifts
            m = json.loads(run(["perplexity", "--model", msz, "--context", 1024, "--json", "--threads", a.threads, text_file]).stdout)
            t = score_torch(ckpt, ids, 1024, a.threads)
            best["msgen"] = max(best.get("msgen", 0), m["tokens"] / m["seconds"])
            best["torch"] = max(best.get("torch", 0), t["tokens"] / t["seconds"])
        scoring[name] = dict(msgen_tps=best["msgen"], torch_tps=best["torch"],
                             msgen_ppl=m["ppl"], torch_ppl=t["ppl"], tokens=m["tokens"])
    if a.scoring_only:
        print_scoring(a, scoring)
        return

    # Decode latency and memory by depth.
    bench = {}
    for name, msz in [("cst", cst), ("baseline", base)]:
        bench[name] = json.loads(run(["bench", "--model", msz, "--json", "--repetitions", 3, "--decode-tokens", 32, "--threads", a.threads,
                                      "--context", *DEPTHS]).stdout)

    print_scoring(a, scoring)
    print("\ndecode (ms/token, median of 3 × 32 tokens) and cache")
    print("  depth     cst ms   baseline ms   speed-up   cst cache   baseline cache   cache ratio")
    dec = {n: {d["depth"]: d for d in b["decode"]} for n, b in bench.items()}
    for depth in DEPTHS:
        c, b = dec["cst"].get(depth), dec["baseline"].get(depth)
        if not c or not b:
            continue
        cm, bm = c["seconds_per_token"]["median"] * 1e3, b["seconds_per_token"]["median"] * 1e3
        print(f"  {depth:5d}   {cm:8.3f}   {bm:11.3f}   {bm / cm:7.2f}x   {c['cache_bytes'] / 1e6:7.2f} MB   {b['cache_bytes'] / 1e6:11.2f} MB"
              f"   {b['cache_bytes'] / c['cache_bytes']:9.1f}x")
    c256, c8k = dec["cst"][256], dec["cst"][8192]
    print(f"  cst latency 8192 / 256: {c8k['seconds_per_token']['median'] / c256['seconds_per_token']['median']:.2f}")
    for n, b in bench.items():
        print(f"  {n} peak RSS {b['peak_rss_bytes'] / 1e6:.1f} MB, weights {b['weight_bytes'] / 1e6:.1f} MB")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for n, style in [("cst", "o-"), ("baseline", "s--")]:
        xs = sorted(dec[n])
        ax1.plot(xs, [dec[n][x]["seconds_per_token"]["median"] * 1e3 for x in xs], style, label=f"msgen {n}")
        ax2.plot(xs, [dec[n][x]["cache_bytes"] / 1e6 for x in xs], style, label=f"msgen {n}")
    ax1.set(xlabel="tokens in context", ylabel="ms per generated token", title=f"Decode latency ({a.threads} thread{'s' if a.threads > 1 else ''})")
    ax2.set(xlabel="tokens in context", ylabel="cache MB", title="Cache memory", yscale="log")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(DEPTHS, [str(d) for d in DEPTHS])
        ax.minorticks_off()
        ax.legend(); ax.grid(alpha=0.3)
    fig.tight_layout()
    a.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.plot, dpi=100)
    print(f"\nwrote {a.plot}")


if __name__ == "__main__":
    main()
