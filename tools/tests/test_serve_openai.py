"""`msgen serve` through the official `openai` client, against a live server on loopback.

The test starts the built msgen binary (release if built, else debug; or $MSGEN_BIN) on a
free port with the bundled CST model and stops it at the end; it skips when no binary is
built (.ci/run builds one first).
"""
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "cst-kjv.msz"


def msgen_binary():
    env = os.environ.get("MSGEN_BIN")
    candidates = [Path(env)] if env else [ROOT / ".build" / "release" / "msgen", ROOT / ".build" / "debug" / "msgen"]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    return None


class Server:
    """One `msgen serve` process on a port it picks itself (--port 0, read from stderr)."""

    def __init__(self, *args):
        binary = msgen_binary()
        if binary is None:
            pytest.skip("msgen is not built (swift build -c release)")
        self.proc = subprocess.Popen([str(binary), "serve", "--model", str(MODEL), "--port", "0", *args],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        line = self.proc.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"msgen serve did not start: {line!r}")
        self.url = f"http://127.0.0.1:{m.group(1)}"

    def stop(self):
        """SIGTERM: a graceful stop, which must exit 0."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture(scope="module")
def server():
    s = Server("--max-sequences", "8")
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


NO_EOS = {"ignore_eos": True}


def test_completion_shape_and_max_tokens(client):
    r = client.completions.create(model="cst-kjv", prompt="In the beginning", max_tokens=12, seed=1, extra_body=NO_EOS)
    assert r.object == "text_completion" and r.model == "cst-kjv"
    assert r.choices[0].finish_reason == "length" and r.choices[0].text
    assert r.usage.completion_tokens == 12 and r.usage.total_tokens == r.usage.prompt_tokens + 12
    assert r.model_extra["seed"] == 1


def test_seed_reproducibility(client):
    kw = dict(model="cst-kjv", prompt="And God said", max_tokens=24, temperature=1.0, extra_body=NO_EOS)
    a = client.completions.create(seed=7, **kw).choices[0].text
    b = client.completions.create(seed=7, **kw).choices[0].text
    c = client.completions.create(seed=8, **kw).choices[0].text
    assert a == b and a != c


def test_streaming_equals_whole(client):
    kw = dict(model="cst-kjv", prompt="And the LORD", max_tokens=30, seed=3, extra_body=NO_EOS)
    whole = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_chat_plain_and_streamed(client):
    msgs = [{"role": "user", "content": "Who made the heaven and the earth?"}]
    r = client.chat.completions.create(model="cst-kjv", messages=msgs, max_tokens=16, seed=5, extra_body=NO_EOS)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    text = r.choices[0].message.content
    assert text and r.choices[0].finish_reason == "length"
    parts = list(client.chat.completions.create(model="cst-kjv", messages=msgs, max_tokens=16, seed=5, stream=True, extra_body=NO_EOS))
    assert parts[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parts) == text
    assert parts[-1].choices[0].finish_reason == "length"


def test_stop_strings(client):
    free = client.completions.create(model="cst-kjv", prompt="And God said", max_tokens=40, seed=11, extra_body=NO_EOS).choices[0].text
    stop = free[12:15]
    r = client.completions.create(model="cst-kjv", prompt="And God said", max_tokens=40, seed=11, stop=[stop], extra_body=NO_EOS)
    assert r.choices[0].finish_reason == "stop"
    assert stop not in r.choices[0].text and free.startswith(r.choices[0].text)


def test_logprobs(client):
    r = client.completions.create(model="cst-kjv", prompt="In the beginning", max_tokens=6, temperature=0, logprobs=3, extra_body=NO_EOS)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    for value, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert value <= 0 and 1 <= len(top) <= 3
        assert abs(value - max(top.values())) < 1e-5  # greedy picks the most likely token
    c = client.chat.completions.create(model="cst-kjv", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, seed=2,
                                       logprobs=True, top_logprobs=2, extra_body=NO_EOS)
    content = c.choices[0].logprobs.content
    assert len(content) == 4 and all(len(t.top_logprobs) == 2 for t in content)


def test_errors_are_openai_errors(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=2)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="cst-kjv", prompt="x", max_tokens=-5)
    assert [m.id for m in client.models.list()] == ["cst-kjv"]


def test_api_key():
    s = Server("--api-key", "sesame")
    try:
        bad = openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.completions.create(model="cst-kjv", prompt="x", max_tokens=2)
        good = openai.OpenAI(base_url=s.url + "/v1", api_key="sesame", max_retries=0)
        assert good.completions.create(model="cst-kjv", prompt="x", max_tokens=2).usage.completion_tokens >= 1
    finally:
        assert s.stop() == 0


def test_sigterm_lets_a_running_stream_finish():
    """SIGTERM mid-stream: no new connections, the running stream ends whole ([DONE]), exit 0."""
    import http.client
    import json
    s = Server()
    port = int(s.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = {"prompt": "And God said", "max_tokens": 60, "seed": 4, "stream": True, "ignore_eos": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    first = r.read1(65536)
    assert first.startswith(b"data: ")
    s.proc.send_signal(signal.SIGTERM)
    rest = first + r.read()
    events = [e[6:] for e in rest.decode().split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 60
    assert s.proc.wait(timeout=30) == 0
