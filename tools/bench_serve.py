#!/usr/bin/env python3
"""Load generator for `msgen serve` on loopback: N concurrent streaming completions.

Starts the server itself (--port 0), then for each concurrency level sends that many
streaming requests at once, each for --tokens tokens (ignore_eos, so all run the same
length), and reports aggregate generated tokens/s, time to first token and inter-token
latency (p50, p99), and the server's peak resident memory while the level ran. Bounded:
every level is one wave of requests, each with a timeout, and the whole run stops by itself.

    tools/bench_serve.py --model models/cst-kjv.msz --levels 1 4 16 64 256 --tokens 64
    tools/bench_serve.py --json > serve.json
"""
import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def rss_bytes(pid):
    """The process's resident memory now (VmRSS), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def one_stream(port, seed, tokens, prompt, timeout, out):
    """One streaming completion; appends (start, [arrival times of text chunks], tokens, ok)."""
    t0 = time.perf_counter()
    arrivals, ntok, ok = [], 0, False
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        body = json.dumps({"prompt": prompt, "max_tokens": tokens, "seed": seed, "stream": True, "ignore_eos": True})
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status == 200:
            buf = b""
            while True:
                chunk = r.read1(65536)
                if not chunk:
                    break
                buf += chunk
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
                    if o["choices"][0]["text"]:
                        arrivals.append(now)
                    if o.get("usage"):
                        ntok = o["usage"]["completion_tokens"]
        conn.close()
    except (OSError, http.client.HTTPException, ValueError):
        pass
    out.append((t0, arrivals, ntok, ok))


def run_level(port, pid, n, tokens, prompt, timeout):
    results, threads = [], []
    peak = rss_bytes(pid)
    start = time.perf_counter()
    for i in range(n):
        t = threading.Thread(target=one_stream, args=(port, 1000 + i, tokens, prompt, timeout, results), daemon=True)
        t.start()
        threads.append(t)
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_bytes(pid))
        time.sleep(0.05)
    wall = time.perf_counter() - start
    ttft = [a[0] - t0 for t0, a, _, _ in results if a]
    gaps = [b - a for _, arr, _, _ in results for a, b in zip(arr, arr[1:])]
    total = sum(r[2] for r in results)
    return {
        "concurrency": n, "ok": sum(r[3] for r in results), "tokens": total, "seconds": wall,
        "tokens_per_second": total / wall if wall > 0 else 0.0,
        "ttft_p50_ms": 1e3 * percentile(ttft, 50), "ttft_p99_ms": 1e3 * percentile(ttft, 99),
        "itl_p50_ms": 1e3 * percentile(gaps, 50), "itl_p99_ms": 1e3 * percentile(gaps, 99),
        "peak_rss_mb": peak / 2**20,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=None, help="msgen executable (default: .build/release/msgen, else debug)")
    ap.add_argument("--model", default=str(ROOT / "models" / "cst-kjv.msz"))
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    ap.add_argument("--tokens", type=int, default=64, help="generated tokens per request")
    ap.add_argument("--prompt", default="And God said")
    ap.add_argument("--threads", type=int, default=None, help="msgen serve --threads")
    ap.add_argument("--timeout", type=float, default=600, help="seconds a request may take")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    binary = args.binary or next((str(p) for p in (ROOT / ".build/release/msgen", ROOT / ".build/debug/msgen") if p.exists()), None)
    if not binary:
        sys.exit("bench_serve: msgen is not built (swift build -c release)")
    top = max(args.levels)
    cmd = [binary, "serve", "--model", args.model, "--port", "0", "--max-sequences", str(top), "--queue", str(top)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        m = re.search(r":(\d+)\s*$", proc.stderr.readline())
        if not m:
            sys.exit("bench_serve: msgen serve did not start")
        port = int(m.group(1))
        rows = []
        for n in args.levels:
            row = run_level(port, proc.pid, n, args.tokens, args.prompt, args.timeout)
            rows.append(row)
            if not args.json:
                print(f"{n:4d} streams: {row['tokens_per_second']:8.1f} tok/s  TTFT p50 {row['ttft_p50_ms']:7.1f} p99 {row['ttft_p99_ms']:7.1f} ms  "
                      f"ITL p50 {row['itl_p50_ms']:6.1f} p99 {row['itl_p99_ms']:6.1f} ms  peak RSS {row['peak_rss_mb']:6.1f} MB  "
                      f"({row['ok']}/{n} ok)", flush=True)
        if args.json:
            print(json.dumps({"model": os.path.basename(args.model), "tokens_per_request": args.tokens, "levels": rows}, indent=1))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
