"""msgen vs llama.cpp on the same GPT-2-small-shaped weights, side by side in one run.

    .venv/bin/python tools/bench_llamacpp.py [--msgen PATH] [--quick] [--threads 1 2] [--rounds N] [--pin CPU]
                                             [--native-openblas]

Needs the `bench` extra (pip install -e 'tools[bench]': gguf, llama-cpp-python).

1. A GPT-2-small-shaped model with random weights (speed does not depend on their
   values) is made with `transformers` and saved with save_pretrained under
   tools/runs/bench-llamacpp/ (git-ignored; reused by later runs): 12 layers, d_model 768,
   12 heads, d_ff 3072, vocab 50,257, tied embeddings, 2,048 learned positions (GPT-2 has
   1,024; decoding 96 timed tokens after a 1,024-token prompt needs more). Its
   tokenizer.json is a synthetic byte-level BPE of 50,257 tokens (256 bytes, 50,000
   two-byte merges, <|endoftext|>): valid for both runtimes, and irrelevant to the timing.
2. `msgen convert DIR -o X.msz --dtype f32|f16|q8`, then each .msz is written as GGUF
   (F32, F16, Q8_0) by msgen_tools.gguf_export, so both sides run identical weights (a q8
   block is ggml's block_q8_0, copied byte for byte).
3. For each dtype and thread count: msgen via `msgen bench --json` and llama.cpp via
   llama-cpp-python (Llama.eval of the prompt, then single-token evals), both with the
   same token ids, the same depths and the same rules (prefill: the best of --repetitions
   runs from an empty cache; decode: one prefill to the depth, then --repetitions runs of
   --decode-tokens tokens, the best of their per-token times). Best, not median: other
   work on the machine only ever slows a run down, so the best run is the least disturbed.
4. The memory-bandwidth limit: the weight bytes each decoded token reads (every matrix and
   vector once; the tied embedding is the LM head; position rows aside) divided by this
   machine's read bandwidth, per thread count: the faster of numpy sums over a buffer far
   larger than the L3 cache (best of several) and `msgen bench --bandwidth` (its widest
   loads; numpy's float sum falls short of the memory on some CPUs). KV-cache reads come
   on top of it.

Prints a table with msgen/llama.cpp ratios, which kernels each side used (llama.cpp's
system_info; msgen's version, the CPU's SIMD flags and the OpenBLAS core it picks) and
writes tools/runs/bench-llamacpp/results.json. --quick is a smoke run of the whole
pipeline on a tiny model (seconds).
"""
import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from msgen_tools import gguf_export  # noqa: E402

DEFAULT_MSGEN = Path("/work/main/.build/release/msgen")
WORK = ROOT / "tools" / "runs" / "bench-llamacpp"
# msgen dtype -> GGUF dtype
DTYPES = {"f32": "f32", "f16": "f16", "q8": "q8_0"}
GPT2_SMALL = dict(vocab_size=50257, n_positions=2048, n_embd=768, n_layer=12, n_head=12)
TINY = dict(vocab_size=50257, n_positions=256, n_embd=128, n_layer=2, n_head=4)
OPENBLAS_TUNING = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# ---------------------------------------------------------------------------------------
# The model

def synthetic_tokenizer(vocab_size):
    """tokenizer.json text: byte-level BPE with the 256 bytes, vocab_size − 257 merges of two
    bytes each, and <|endoftext|> as the last id (as GPT-2's 50,256)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from msgen_tools.train_lm import bytes_to_unicode  # the one GPT-2 byte alphabet of the tools

    alphabet = bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(alphabet)}
    merges = []
    for a in alphabet:
        for b in alphabet:
            if len(vocab) == vocab_size - 1:
                break
            merges.append((a, b))
            vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    assert tok.get_vocab_size() == vocab_size
    return tok.to_str()


def make_checkpoint(shape, out):
    """A random-weight GPT-2 of `shape`, saved with save_pretrained (reused if already there)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    marker = out / "shape.json"
    if marker.exists() and json.loads(marker.read_text()) == shape:
        return out
    shutil.rmtree(out, ignore_errors=True)
    torch.manual_seed(0)
    cfg = GPT2Config(**shape, bos_token_id=shape["vocab_size"] - 1, eos_token_id=shape["vocab_size"] - 1)
    GPT2LMHeadModel(cfg).save_pretrained(out, safe_serialization=True)
    (out / "tokenizer.json").write_text(synthetic_tokenizer(shape["vocab_size"]))
    (out / "generation_config.json").unlink(missing_ok=True)
    marker.write_text(json.dumps(shape))
    return out


def convert_all(msgen, ckpt, dtypes, env):
    """{dtype: (msz path, gguf path)}, both made from the same checkpoint (reused if newer)."""
    files = {}
    for dt in dtypes:
        m, g = ckpt.parent / f"{ckpt.name}-{dt}.msz", ckpt.parent / f"{ckpt.name}-{DTYPES[dt]}.gguf"
        src_time = (ckpt / "shape.json").stat().st_mtime
        if not m.exists() or m.stat().st_mtime < src_time:
            r = subprocess.run([str(msgen), "convert", str(ckpt), "-o", str(m), "--dtype", dt], env=env,
                               capture_output=True, text=True)
            if r.returncode:
                sys.exit(f"bench_llamacpp: msgen convert failed: {r.stderr.strip()}")
        if not g.exists() or g.stat().st_mtime < m.stat().st_mtime:
            gguf_export.write(gguf_export.from_msz(m), g, DTYPES[dt], name=ckpt.name)
        files[dt] = (m, g)
    return files


# ---------------------------------------------------------------------------------------
# The machine

def read_bandwidth(threads, mib=1024, repetitions=5):
    """Best read bandwidth (bytes/s) of `threads` threads summing their share of a buffer of
    `mib` MiB (≫ the L3 cache). numpy releases the GIL inside the sum, so threads overlap."""
    buf = np.ones(mib * (1 << 20) // 4, dtype=np.float32)
    parts = np.array_split(buf, threads)

    def once():
        ts = [threading.Thread(target=np.sum, args=(p,)) for p in parts]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return time.perf_counter() - t0

    once()  # page in
    return buf.nbytes / min(once() for _ in range(repetitions))


def msgen_read_bandwidth(msgen, model, threads, env):
    """msgen's own read probe (`msgen bench --bandwidth`: the widest loads this CPU has, over
    256 MB) in bytes/s, or None if it fails. numpy's sum is slower than the memory on an
    AVX-512 machine (it adds floats in order), which would put the limit too low."""
    cmd = [str(msgen), "bench", "--model", str(model), "--context", "1", "--repetitions", "1", "--decode-tokens", "1",
           "--threads", str(threads), "--bandwidth", "--json"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    try:
        return json.loads(r.stdout)["read_bandwidth_gb_per_second"] * 1e9
    except (ValueError, KeyError):
        return None


def cpu_flags(all_flags=False):
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
        else:
            return ""
    if all_flags:
        return " ".join(sorted(flags))
    wanted = ["sse4_2", "avx", "f16c", "fma", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile"]
    return " ".join(f for f in wanted if f in flags)


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


def openblas_core(env):
    """The OpenBLAS build and the core it picks under `env` (msgen's sgemm), in a fresh process."""
    code = ("import ctypes; b = ctypes.CDLL('libopenblas.so.0'); b.openblas_get_config.restype = ctypes.c_char_p;"
            "b.openblas_get_corename.restype = ctypes.c_char_p;"
            "print(b.openblas_get_config().decode(), '| core:', b.openblas_get_corename().decode())")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return r.stdout.strip() or r.stderr.strip()


def msgen_env(native_openblas):
    env = dict(os.environ)
    if native_openblas:
        for k in OPENBLAS_TUNING:
            env.pop(k, None)
    return env


# ---------------------------------------------------------------------------------------
# The two runtimes

def bench_tokens(n, vocab, offset=0):
    """The token ids `msgen bench` uses (Sources/MSGen/Bench.swift), so both sides see the same prompt."""
    return [((i + offset) * 2_654_435_761) % vocab for i in range(n)]


def pinned(threads, a):
    """The CPUs a run of `threads` threads is pinned to (--pin: one-thread runs only), or None."""
    return {a.pin} if a.pin is not None and threads == 1 else None


def run_msgen(msgen, model, depths, threads, a, env):
    cpus = pinned(threads, a)
    cmd = (["taskset", "-c", ",".join(map(str, cpus))] if cpus else []) + [str(msgen), "bench", "--model", str(model), "--context", *map(str, depths), "--threads", str(threads),
           "--repetitions", str(a.repetitions), "--decode-tokens", str(a.decode_tokens), "--json"]
    r = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    j = json.loads(r.stdout)
    return dict(
        prefill={p["tokens"]: p["tokens"] / p["seconds"]["min"] for p in j["prefill"]},
        decode={d["depth"]: 1 / d["seconds_per_token"]["min"] for d in j["decode"]},
        cache_bytes={d["depth"]: d["cache_bytes"] for d in j["decode"]},
        resident_weight_bytes=j.get("weight_bytes"), peak_rss=j.get("peak_rss_bytes"), kernels=j.get("cpu_kernels"),
        extra={k: v for k, v in j.items() if k not in ("prefill", "decode", "model")},
    )


def best_of(old, new):
    """A run's figures with the faster prefill and decode of two runs of the same side."""
    if old is None:
        return new
    for key in ("prefill", "decode"):
        new[key] = {d: max(v, old[key].get(d, 0)) for d, v in new[key].items()}
    return new


_QUIET = None


def silence_llamacpp():
    """llama.cpp logs every model load to stderr, even with verbose=False; drop it."""
    global _QUIET
    import llama_cpp

    _QUIET = llama_cpp.llama_log_callback(lambda level, text, user_data: None)  # kept alive here
    llama_cpp.llama_log_set(_QUIET, ctypes.c_void_p())


def run_llamacpp(gguf_path, depths, threads, a, vocab):
    cpus = pinned(threads, a)
    if not cpus:
        return run_llamacpp_here(gguf_path, depths, threads, a, vocab)
    # llama.cpp runs in this process: pin it (and the threads it starts) for the run.
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        return run_llamacpp_here(gguf_path, depths, threads, a, vocab)
    finally:
        os.sched_setaffinity(0, before)


def amx_crashes(gguf_path):
    """Whether llama.cpp would put this file's matrices in its AMX buffer, which crashes here:
    on a CPU with AMX (Sapphire Rapids, in this project's VMs) llama-cpp-python 0.3.36's first
    Q8_0 product dies in ggml_backend_amx_mul_mat (SIGSEGV, the whole process). F32 and F16
    never go to that buffer."""
    return "q8_0" in gguf_path.name and "amx_int8" in cpu_flags(all_flags=True).split()


def extra_buffers(gguf_path, a):
    """llama.cpp's extra buffer types (weight repacking: AMX, CPU_REPACK): on unless
    --llama-extra-buffers off, or auto and they would crash (amx_crashes)."""
    return a.llama_extra_buffers == "on" or (a.llama_extra_buffers == "auto" and not amx_crashes(gguf_path))


def run_llamacpp_here(gguf_path, depths, threads, a, vocab):
    import llama_cpp.llama_cpp as lib
    from llama_cpp import Llama

    n_ctx = max(depths) + a.decode_tokens * a.repetitions + 8
    # Llama() takes no use_extra_bufts argument: it starts from llama_model_default_params(),
    # so to turn them off that function hands out params with the field cleared while the
    # model loads.
    default_params = lib.llama_model_default_params
    if not extra_buffers(gguf_path, a):
        def without_extra_buffers():
            p = default_params()
            p.use_extra_bufts = False
            return p
        lib.llama_model_default_params = without_extra_buffers
    # n_batch 2048 / n_ubatch 512 and flash attention are llama.cpp's own defaults (llama-bench,
    # llama-server: flash attention "auto", on for a CPU); llama-cpp-python would turn it off.
    try:
        llm = Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_batch=2048, n_ubatch=512, n_threads=threads,
                    n_threads_batch=threads, flash_attn=a.flash_attn, verbose=False)
    finally:
        lib.llama_model_default_params = default_params
    out = dict(prefill={}, decode={})
    try:
        for depth in depths:
            prompt = bench_tokens(depth, vocab)
            times = []
            for _ in range(a.repetitions):
                llm.reset()
                t0 = time.perf_counter()
                llm.eval(prompt)
                times.append(time.perf_counter() - t0)
            out["prefill"][depth] = depth / min(times)
            llm.reset()
            llm.eval(prompt)
            nxt = bench_tokens(a.decode_tokens * a.repetitions, vocab, offset=depth)
            per_token = []
            for r in range(a.repetitions):
                t0 = time.perf_counter()
                for t in nxt[r * a.decode_tokens:(r + 1) * a.decode_tokens]:
                    llm.eval([t])
                per_token.append((time.perf_counter() - t0) / a.decode_tokens)
            out["decode"][depth] = 1 / min(per_token)
    finally:
        llm.close()
    return out


def llamacpp_info():
    import llama_cpp

    return f"llama-cpp-python {llama_cpp.__version__}: {llama_cpp.llama_print_system_info().decode().strip()}"


# ---------------------------------------------------------------------------------------
# Report

def print_table(results, depths, threads_list, bandwidth, weight_bytes):
    deepest = max(depths)
    print("\ndecode tokens/s (best run; higher is better); limit = weight bytes per token / measured read bandwidth")
    head = f"{'dtype':5s} {'thr':>3s} " + " ".join(f"{'@' + str(d):>7s} {'msgen':>7s} {'llama':>7s} {'ratio':>5s} " for d in depths)
    print(head + f"{'limit':>7s}  msgen/limit llama/limit")
    for dt in results:
        for t in threads_list:
            m, l = results[dt][t]["msgen"], results[dt][t]["llama"]
            limit = bandwidth[t] / weight_bytes[dt]
            row = f"{dt:5s} {t:3d} "
            for d in depths:
                md, ld = m["decode"].get(d), l["decode"].get(d)
                row += f"{'':7s} {fmt(md):>7s} {fmt(ld):>7s} {ratio(md, ld):>5s} "
            best_m = max(m["decode"].values(), default=None)
            best_l = max(l["decode"].values(), default=None)
            row += f"{limit:7.1f}  {pct(best_m, limit):>11s} {pct(best_l, limit):>11s}"
            print(row)
    print(f"  (x/limit: the better of the depths; the deeper the prompt, the more KV cache each token reads on top of"
          f" the weights, e.g. at {deepest}: msgen {fmt_mb(results, 'msgen', deepest)})")
    print("\nthe same, each round against the bandwidth probed just before and after it (median of the rounds, min–max)")
    for dt in results:
        for t in threads_list:
            p = results[dt][t].get("paired") or []
            if p:
                line = "  ".join(f"{side} {median(x[side] for x in p):.0%} ({min(x[side] for x in p):.0%}–{max(x[side] for x in p):.0%})"
                                 for side in ("msgen", "llama"))
                bws = ", ".join(f"{x['bandwidth'] / 1e9:.1f}" for x in p)
                print(f"{dt:5s} {t:3d}   {line}   bandwidth {bws} GB/s")
    print("\nprompt processing tokens/s (best run; the whole prompt from an empty cache)")
    print(f"{'dtype':5s} {'thr':>3s} " + " ".join(f"{str(d) + ' tok':>8s} {'msgen':>7s} {'llama':>7s} {'ratio':>5s}" for d in depths))
    for dt in results:
        for t in threads_list:
            m, l = results[dt][t]["msgen"], results[dt][t]["llama"]
            row = f"{dt:5s} {t:3d} "
            for d in depths:
                mp, lp = m["prefill"].get(d), l["prefill"].get(d)
                row += f"{'':8s} {fmt(mp):>7s} {fmt(lp):>7s} {ratio(mp, lp):>5s}"
            print(row)


def median(xs):
    xs = sorted(xs)
    return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2


def fmt_mb(results, side, depth):
    """msgen's cache bytes at `depth` (from its bench JSON), as text."""
    for per_dtype in results.values():
        for r in per_dtype.values():
            b = r[side].get("cache_bytes", {}).get(depth)
            if b is not None:
                return f"{b / 1e6:.1f} MB"
    return "?"


def fmt(x):
    return "-" if x is None else f"{x:.1f}" if x < 1000 else f"{x:.0f}"


def ratio(a, b):
    return "-" if a is None or b is None else f"{a / b:.2f}"


def pct(a, b):
    return "-" if a is None else f"{a / b:.0%}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--msgen", type=Path, default=DEFAULT_MSGEN, help=f"msgen binary (default {DEFAULT_MSGEN})")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny model, short prompts, one repetition")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--depths", type=int, nargs="+", default=None, help="prompt lengths (default 128 1024)")
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    ap.add_argument("--repetitions", type=int, default=None, help="default 3 (1 with --quick)")
    ap.add_argument("--decode-tokens", type=int, default=None, help="default 32 (4 with --quick)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the two sides this many times each, alternating, and keep each side's best (a noisy machine)")
    ap.add_argument("--llama-extra-buffers", choices=["auto", "on", "off"], default="auto",
                    help="llama.cpp's weight-repacking buffers (AMX, CPU_REPACK); auto: on, except Q8_0 on a CPU with "
                         "AMX, where llama-cpp-python 0.3.36 crashes in its AMX product")
    ap.add_argument("--no-flash-attn", dest="flash_attn", action="store_false",
                    help="run llama.cpp without flash attention (llama-cpp-python's default; llama.cpp's is on)")
    ap.add_argument("--native-openblas", action="store_true",
                    help="run msgen without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (OpenBLAS picks its own kernels)")
    ap.add_argument("--pin", type=int, default=None, metavar="CPU",
                    help="run both sides' one-thread runs on this CPU only (a busy machine moves threads around less)")
    ap.add_argument("--work", type=Path, default=WORK, help="where the model files are kept (default tools/runs/bench-llamacpp)")
    a = ap.parse_args()
    a.depths = a.depths or ([16, 64] if a.quick else [128, 1024])
    a.repetitions = a.repetitions or (1 if a.quick else 3)
    a.decode_tokens = a.decode_tokens or (4 if a.quick else 32)
    if not a.msgen.exists():
        sys.exit(f"bench_llamacpp: no msgen binary at {a.msgen} (build it with `swift build -c release` or pass --msgen)")
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError as e:
        sys.exit(f"bench_llamacpp: {e.name} is missing: pip install -e 'tools[bench]'")

    shape = TINY if a.quick else GPT2_SMALL
    if max(a.depths) + a.repetitions * a.decode_tokens > shape["n_positions"]:
        sys.exit(f"bench_llamacpp: depth {max(a.depths)} + {a.repetitions}×{a.decode_tokens} decoded tokens is past the model's "
                 f"{shape['n_positions']} positions")
    env = msgen_env(a.native_openblas)
    silence_llamacpp()
    a.work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    ckpt = make_checkpoint(shape, a.work / ("tiny" if a.quick else "gpt2-small"))
    files = convert_all(a.msgen, ckpt, a.dtypes, env)
    weight_bytes = {dt: gguf_export.decode_bytes_per_token(files[dt][1]) for dt in a.dtypes}
    numpy_bw = {t: read_bandwidth(t, mib=256 if a.quick else 1024) for t in sorted(set(a.threads) | {1})}
    probe_model = files[a.dtypes[-1]][0]
    msgen_bw = {t: msgen_read_bandwidth(a.msgen, probe_model, t, env) for t in numpy_bw}
    # The faster of the two probes: the stricter (higher) limit.
    measured = {t: max(numpy_bw[t], msgen_bw[t] or 0) for t in numpy_bw}
    # T threads can always read at least as fast as fewer threads (on a busy machine a
    # second thread may find no free core), so each limit uses the best of up to T threads.
    bandwidth = {t: max(bw for k, bw in measured.items() if k <= t) for t in a.threads}

    load = os.getloadavg()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
          f"{'  (the machine is busy: figures are noisy)' if load[0] > 0.5 * os.cpu_count() else ''}")
    print(f"model: {ckpt.name} {shape}, tied embeddings, random weights")
    for t, bw in measured.items():
        probe = f"{msgen_bw[t] / 1e9:.1f} GB/s" if msgen_bw[t] else "failed"
        print(f"read bandwidth, {t} thread(s): {bw / 1e9:.1f} GB/s, the faster of numpy's sum over {256 if a.quick else 1024} MiB"
              f" (best of 5: {numpy_bw[t] / 1e9:.1f} GB/s) and msgen bench --bandwidth ({probe})")
    for dt in a.dtypes:
        print(f"weight bytes per token, {dt}: {weight_bytes[dt] / 1e6:.1f} MB")
    version = subprocess.run([str(a.msgen), "--version"], capture_output=True, text=True, env=env).stdout.strip()
    print(f"msgen {version} ({a.msgen}); CPU flags: {cpu_flags()}")
    print(f"  OpenBLAS for msgen{' (--native-openblas)' if a.native_openblas else ''}: {openblas_core(env)};"
          f" env {' '.join(f'{k}={env[k]}' for k in OPENBLAS_TUNING if k in env) or '(no OpenBLAS tuning variables)'}")
    print(f"llama.cpp: {llamacpp_info()}; flash attention {'on' if a.flash_attn else 'off'}, KV cache f16, n_ubatch 512")

    results = {}
    for dt in a.dtypes:
        msz_path, gguf_path = files[dt]
        results[dt] = {}
        for t in a.threads:
            # --rounds: msgen, llama.cpp, msgen, llama.cpp, …, each side's best figures kept,
            # so that a slow spell of a shared machine lands on both sides alike.
            # Each round also probes the read bandwidth just before and after its two runs:
            # on a shared machine it moves (38–75 GB/s at 2 threads in one session here),
            # so each round's decode is also set against the bandwidth of its own minutes.
            m = ll = None
            paired = []
            for _ in range(a.rounds):
                before = msgen_read_bandwidth(a.msgen, probe_model, t, env) or 0
                mr = run_msgen(a.msgen, msz_path, a.depths, t, a, env)
                lr = run_llamacpp(gguf_path, a.depths, t, a, shape["vocab_size"])
                bw = max(before, msgen_read_bandwidth(a.msgen, probe_model, t, env) or 0)
                if bw:
                    paired.append(dict(bandwidth=bw, msgen=max(mr["decode"].values()) * weight_bytes[dt] / bw,
                                       llama=max(lr["decode"].values()) * weight_bytes[dt] / bw))
                m, ll = best_of(m, mr), best_of(ll, lr)
            results[dt][t] = dict(msgen=m, llama=ll, paired=paired)
            extra = "" if extra_buffers(gguf_path, a) else (
                " (extra buffer types off: its AMX buffer crashes on this CPU)" if amx_crashes(gguf_path)
                else " (extra buffer types off)")
            print(f"  {dt} {t} thread(s){' pinned to CPU ' + str(a.pin) if pinned(t, a) else ''}: msgen ({m['kernels']} kernels)"
                  f" decode {', '.join(fmt(v) for v in m['decode'].values())} tok/s, "
                  f"llama.cpp{extra} {', '.join(fmt(v) for v in ll['decode'].values())} tok/s", flush=True)
    # Measured again after the runs, keeping the better: a busy machine gives a probe a
    # bad moment as easily as a run, and a low bandwidth would flatter both runtimes.
    for t in measured:
        measured[t] = max(measured[t], read_bandwidth(t, mib=256 if a.quick else 1024), msgen_read_bandwidth(a.msgen, probe_model, t, env) or 0)
    bandwidth = {t: max(bw for k, bw in measured.items() if k <= t) for t in a.threads}
    print("read bandwidth after the runs (the better of before and after): "
          + ", ".join(f"{t} thread(s) {bw / 1e9:.1f} GB/s" for t, bw in measured.items()))
    print_table(results, a.depths, a.threads, bandwidth, weight_bytes)
    if results:
        any_m = next(iter(next(iter(results.values())).values()))["msgen"]
        print(f"\nmsgen resident weight bytes (bench's weight_bytes): "
              + ", ".join(f"{dt} {results[dt][a.threads[0]]['msgen']['resident_weight_bytes'] / 1e6:.0f} MB" for dt in results)
              + f"; cache bytes at depth {', '.join(f'{d}: {b / 1e6:.1f} MB' for d, b in any_m['cache_bytes'].items())}")
    print(f"total {time.perf_counter() - t_start:.0f} s")
    (a.work / ("results-quick.json" if a.quick else "results.json")).write_text(json.dumps(dict(
        shape=shape, depths=a.depths, threads=a.threads, repetitions=a.repetitions, decode_tokens=a.decode_tokens,
        rounds=a.rounds, bandwidth=measured, weight_bytes=weight_bytes, load_average=load, results=results,
        llamacpp=llamacpp_info(), msgen=version, cpu_flags=cpu_flags()), indent=1, default=str))


if __name__ == "__main__":
    main()
