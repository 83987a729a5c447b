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
import selectors
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


class Stream:
    """One streaming completion, read by `run_level`'s single thread: its HTTP response
    parsed as bytes arrive (status line, headers, chunked or plain body, then the SSE
    events), each text event's arrival time kept."""

    def __init__(self, port, body):
        data = json.dumps(body).encode()
        self.request = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                        "Connection: close\r\n\r\n").encode() + data
        self.raw, self.body = b"", b""
        self.status, self.chunked = None, False
        self.arrivals, self.ntok, self.ok = [], None, False
        self.t0 = self.end = None

    def feed(self, data, now):
        self.raw += data
        if self.status is None:
            head, sep, rest = self.raw.partition(b"\r\n\r\n")
            if not sep:
                return
            lines = head.decode("latin-1").split("\r\n")
            self.status = int(lines[0].split()[1])
            self.chunked = any(l.lower().replace(" ", "") == "transfer-encoding:chunked" for l in lines[1:])
            self.raw = rest
        if self.chunked:
            while True:
                size_line, sep, rest = self.raw.partition(b"\r\n")
                if not sep:
                    break
                size = int(size_line.split(b";")[0], 16)
                if len(rest) < size + 2:
                    break
                self.body += rest[:size]
                self.raw = rest[size + 2:]
        else:
            self.body, self.raw = self.body + self.raw, b""
        self.body = self.body.replace(b"\r\n", b"\n")
        while b"\n\n" in self.body:
            event, self.body = self.body.split(b"\n\n", 1)
            if self.status != 200 or not event.startswith(b"data: "):
                continue
            payload = event[6:]
            if payload == b"[DONE]":
                self.ok = True
                continue
            o = json.loads(payload)
            if o["choices"] and o["choices"][0].get("text"):
                self.arrivals.append(now)
            if o.get("usage"):
                self.ntok = o["usage"]["completion_tokens"]

    @property
    def tokens(self):
        # llama-cpp-python's stream carries no usage: one chunk per token there.
        return len(self.arrivals) if self.ntok is None else self.ntok


def run_level(server, bodies, timeout):
    """Every stream of the level from this one thread, over non-blocking sockets and one
    selector. (A thread per stream, as before, had 64 Python threads handing the GIL to
    each other on every chunk: ~850 context switches a second preempting the server's
    scheduler thread on a 2-core machine, 13 % of its time.)"""
    sel = selectors.DefaultSelector()
    streams = []
    peak = rss_bytes(server.pid)
    start = time.perf_counter()
    for body in bodies:
        st = Stream(server.port, body)
        st.t0 = time.perf_counter()
        try:
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
            sock.sendall(st.request)
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ, st)
        except OSError:
            st.end = time.perf_counter()
        streams.append(st)
    deadline, last_poll = start + timeout, 0.0
    while sel.get_map() and time.perf_counter() < deadline:
        for key, _ in sel.select(timeout=0.05):
            st, now = key.data, time.perf_counter()
            try:
                data = key.fileobj.recv(1 << 16)
                if data:
                    st.feed(data, now)
            except (OSError, ValueError):
                data = b""
            if not data:
                sel.unregister(key.fileobj)
                key.fileobj.close()
                st.end = now
        if time.perf_counter() - last_poll >= 0.05:
            peak, last_poll = max(peak, rss_bytes(server.pid)), time.perf_counter()
    for key in list(sel.get_map().values()):  # past the deadline: what is left failed
        sel.unregister(key.fileobj)
        key.fileobj.close()
        key.data.end, key.data.ok = time.perf_counter(), False
    # From the first request to the last response's end, as the streams saw it.
    wall = max((st.end for st in streams), default=start) - start
    ttft = [st.arrivals[0] - st.t0 for st in streams if st.arrivals]
    gaps = [b - a for st in streams for a, b in zip(st.arrivals, st.arrivals[1:])]
    total = sum(st.tokens for st in streams)
    n = len(bodies)
    return {
        "server": server.kind, "concurrency": n, "ok": sum(st.ok for st in streams), "tokens": total, "seconds": wall,
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


def kernels_line(kind, binary=None, model=None, threads=None):
    if kind == "msgen":  # what this binary picks on this CPU, from a one-token `msgen bench`
        cmd = [binary, "bench", "--model", model, "--context", "1", "--repetitions", "1", "--decode-tokens", "1", "--json"]
        if threads:
            cmd += ["--threads", str(threads)]
        try:
            d = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            return f"msgen: {d['cpu_kernels']} kernels, products by {d['matrix_products']}, threads {d['threads']:.0f}"
        except (subprocess.CalledProcessError, ValueError, KeyError) as e:  # informative only
            return f"msgen: (kernels unavailable: {e})"
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
                    print(kernels_line(s.kind, binary, model, args.threads), flush=True)
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
