#!/usr/bin/env python3
"""Load generator for `msgen serve` on loopback: N concurrent streaming completions.

Starts each server itself (on a free port), then for each concurrency level sends that
many streaming requests at once, each for --tokens tokens (ignore_eos, so all run the same
length), and reports aggregate generated tokens/s, time to first token and inter-token
latency (p50, p99), and the server's peak resident memory while the level ran. Bounded:
every level is one wave of requests, each with a timeout, and the whole run stops by itself.

    tools/bench_serve.py --levels 1 4 16 64 256 --tokens 64            # bundled CST and baseline
    tools/bench_serve.py --models models/cst-kjv.msz --prompt-tokens 4032 --levels 16 256
    tools/bench_serve.py --models models/baseline-kjv.msz --peer llama-cpp --levels 1 8 32
    tools/bench_serve.py --json > serve.json; tools/bench_serve.py --plot docs/serve.png

--prompt-tokens N gives every stream its own prompt of N tokens (consecutive passages of
--text, the KJV test split by default), so each stream is N + --tokens deep at its end.
--peer llama-cpp runs the same levels, level by level alternating with msgen, against
llama.cpp's server from the `llama-cpp-python[server]` package on the same weights written
as GGUF (`python -m msgen_tools.gguf_export MODEL.msz`, done here when --gguf is not given),
with the same number of threads.
"""
import argparse
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def rss_bytes(pid):
    """The process's resident memory now (VmRSS), in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_json(port, path, body, timeout=60):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    if r.status != 200:
        raise RuntimeError(f"{path}: HTTP {r.status}: {data[:200]!r}")
    return json.loads(data)


class Server:
    """A server process on loopback: msgen serve, or llama-cpp-python's server."""

    def __init__(self, kind, cmd, port):
        self.kind, self.port = kind, port
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log = []
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"bench_serve: {kind} server exited: {''.join(self.log)[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/v1/models")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        sys.exit(f"bench_serve: {kind} server did not start")

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)
            del self.log[:-200]

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def one_stream(port, body, timeout, out):
    """One streaming completion; appends (start, [arrival times of text chunks], tokens, ok, end)."""
    t0 = time.perf_counter()
    arrivals, ntok, ok = [], None, False
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status == 200:
            buf = b""
            while True:
                chunk = r.read1(65536)
                if not chunk:
                    break
                buf += chunk.replace(b"\r\n", b"\n")
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    if not event.startswith(b"data: "):
                        continue
                    data = event[6:]
                    if data == b"[DONE]":
                        ok = True
                        continue
                    now = time.perf_counter()
                    o = json.loads(data)
                    if o["choices"] and o["choices"][0].get("text"):
                        arrivals.append(now)
                    if o.get("usage"):
                        ntok = o["usage"]["completion_tokens"]
        conn.close()
    except (OSError, http.client.HTTPException, ValueError):
        pass
    # llama-cpp-python's stream carries no usage: one chunk per token there.
    out.append((t0, arrivals, len(arrivals) if ntok is None else ntok, ok, time.perf_counter()))


def run_level(server, bodies, timeout):
    results, threads = [], []
    peak = rss_bytes(server.pid)
    start = time.perf_counter()
    for body in bodies:
        t = threading.Thread(target=one_stream, args=(server.port, body, timeout, results), daemon=True)
        t.start()
        threads.append(t)
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_bytes(server.pid))
        time.sleep(0.05)
    # From the first request to the last response's end, as the streams saw it (not this
    # loop's 50 ms polling, which made a 70 ms single stream count as 100 or 150 ms).
    wall = max((r[4] for r in results), default=start) - start
    ttft = [a[0] - t0 for t0, a, _, _, _ in results if a]
    gaps = [b - a for _, arr, _, _, _ in results for a, b in zip(arr, arr[1:])]
    total = sum(r[2] for r in results)
    n = len(bodies)
    return {
        "server": server.kind, "concurrency": n, "ok": sum(r[3] for r in results), "tokens": total, "seconds": wall,
        "tokens_per_second": total / wall if wall > 0 else 0.0,
        "ttft_p50_ms": 1e3 * percentile(ttft, 50), "ttft_p99_ms": 1e3 * percentile(ttft, 99),
        "itl_p50_ms": 1e3 * percentile(gaps, 50), "itl_p99_ms": 1e3 * percentile(gaps, 99),
        "peak_rss_mb": peak / 2**20,
    }


def prompts_of(server, text, n_prompts, n_tokens):
    """n_prompts prompts of n_tokens tokens each: consecutive passages of `text`, as the
    msgen server tokenizes it (so that each is exactly n_tokens deep there)."""
    ids = post_json(server.port, "/tokenize", {"content": text})["tokens"]
    if len(ids) < n_tokens + 1:
        sys.exit(f"bench_serve: --text has {len(ids)} tokens, fewer than --prompt-tokens {n_tokens}")
    out = []
    for i in range(n_prompts):
        start = (i * 997) % (len(ids) - n_tokens)
        out.append(post_json(server.port, "/detokenize", {"tokens": ids[start:start + n_tokens]})["content"])
    return out


def msgen_server(binary, model, args):
    port = free_port()
    top = max(args.levels)
    cmd = [binary, "serve", "--model", model, "--port", str(port), "--max-sequences", str(top), "--queue", str(top)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return Server("msgen", cmd, port)


def llama_server(gguf, args):
    port = free_port()
    cmd = [PYTHON, "-m", "llama_cpp.server", "--model", gguf, "--port", str(port), "--host", "127.0.0.1",
           "--n_ctx", str(args.peer_context), "--verbose", "False"]
    if args.threads:
        cmd += ["--n_threads", str(args.threads), "--n_threads_batch", str(args.threads)]
    return Server("llama.cpp", cmd, port)


def kernels_line(kind):
    if kind == "msgen":
        return "msgen: its own kernels (level chosen at run time; `msgen bench` prints it), OpenBLAS sgemm for prefill"
    try:
        import llama_cpp
        return "llama.cpp: " + llama_cpp.llama_print_system_info().decode().strip()
    except Exception as e:  # the peer's report is informative only
        return f"llama.cpp: (system info unavailable: {e})"


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for key in sorted({(r["model"], r["server"]) for r in rows}):
        rs = sorted((r for r in rows if (r["model"], r["server"]) == key), key=lambda r: r["concurrency"])
        label = f"{key[0]} ({key[1]})"
        a.plot([r["concurrency"] for r in rs], [r["tokens_per_second"] for r in rs], "o-", label=label)
        b.plot([r["concurrency"] for r in rs], [r["peak_rss_mb"] for r in rs], "o-", label=label)
    for ax, title in ((a, "aggregate generated tokens/s"), (b, "peak RSS (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=None, help="msgen executable (default: .build/release/msgen, else debug)")
    ap.add_argument("--models", nargs="+", default=[str(ROOT / "models" / "cst-kjv.msz"), str(ROOT / "models" / "baseline-kjv.msz")])
    ap.add_argument("--model", dest="models", action="store", type=lambda s: [s], help=argparse.SUPPRESS)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    ap.add_argument("--tokens", type=int, default=64, help="generated tokens per request")
    ap.add_argument("--prompt", default="And God said", help="the prompt, when --prompt-tokens is not given")
    ap.add_argument("--prompt-tokens", type=int, default=None, help="each stream's own prompt of this many tokens, from --text")
    ap.add_argument("--text", default=str(ROOT / "tools" / "data" / "kjv" / "test.txt"))
    ap.add_argument("--threads", type=int, default=None, help="threads for each server (msgen --threads, llama.cpp --n_threads)")
    ap.add_argument("--peer", choices=["llama-cpp"], default=None, help="also run llama.cpp's server, level by level alternating")
    ap.add_argument("--gguf", default=None, help="the GGUF the peer serves (default: exported from the model)")
    ap.add_argument("--peer-context", type=int, default=2048, help="llama.cpp's n_ctx")
    ap.add_argument("--timeout", type=float, default=900, help="seconds a request may take")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--plot", default=None, help="write throughput and RSS against concurrency to this PNG")
    args = ap.parse_args()

    binary = args.binary or next((str(p) for p in (ROOT / ".build/release/msgen", ROOT / ".build/debug/msgen") if p.exists()), None)
    if not binary:
        sys.exit("bench_serve: msgen is not built (swift build -c release)")
    text = Path(args.text).read_text() if args.prompt_tokens else None
    rows, tmp = [], tempfile.TemporaryDirectory()
    for model in args.models:
        name = Path(model).stem
        servers = [msgen_server(binary, model, args)]
        try:
            if args.peer:
                gguf = args.gguf
                if not gguf:
                    gguf = os.path.join(tmp.name, name + ".gguf")
                    subprocess.run([PYTHON, "-m", "msgen_tools.gguf_export", str(Path(model).resolve()), "-o", gguf], check=True,
                                   cwd=ROOT / "tools", stdout=subprocess.DEVNULL)
                servers.append(llama_server(gguf, args))
            if not args.json:
                for s in servers:
                    print(kernels_line(s.kind), flush=True)
            top = max(args.levels)
            prompts = prompts_of(servers[0], text, top, args.prompt_tokens) if args.prompt_tokens else [args.prompt] * top
            for n in args.levels:
                for s in servers:  # alternating: the same level on each side, back to back
                    bodies = [{"prompt": prompts[i], "max_tokens": args.tokens, "seed": 1000 + i, "stream": True,
                               "ignore_eos": True, "temperature": 0.8} for i in range(n)]
                    row = run_level(s, bodies, args.timeout)
                    row["model"] = name
                    row["prompt_tokens"] = args.prompt_tokens
                    rows.append(row)
                    if not args.json:
                        print(f"{name:>14} {s.kind:>9} {n:4d} streams: {row['tokens_per_second']:8.1f} tok/s  "
                              f"TTFT p50 {row['ttft_p50_ms']:8.1f} p99 {row['ttft_p99_ms']:8.1f} ms  "
                              f"ITL p50 {row['itl_p50_ms']:6.1f} p99 {row['itl_p99_ms']:7.1f} ms  "
                              f"peak RSS {row['peak_rss_mb']:6.1f} MB  ({row['ok']}/{n} ok)", flush=True)
                if args.peer and not args.json:
                    m, p = rows[-2]["tokens_per_second"], rows[-1]["tokens_per_second"]
                    print(f"{'':>14} {'':>9} {n:4d} streams: msgen / llama.cpp = {m / p if p else float('inf'):.2f}x", flush=True)
        finally:
            for s in servers:
                s.stop()
    if args.json:
        print(json.dumps({"tokens_per_request": args.tokens, "prompt_tokens": args.prompt_tokens,
                          "threads": args.threads, "levels": rows}, indent=1))
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
