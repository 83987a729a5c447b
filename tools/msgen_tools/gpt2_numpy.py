"""GPT-2's forward pass in float64 numpy: an independent reference for checking runtimes
(msgen, llama.cpp) and file readers against each other. Slow and exact; tests only.

    from msgen_tools import gguf_export, gpt2_numpy
    m = gguf_export.load("models/baseline-kjv.msz")
    logits = gpt2_numpy.reference_logits(m, ids)      # [len(ids), vocab]
"""
import math

import numpy as np

from .gguf_export import as_f32


def gelu(x, kind):
    """GELU in float64: "gelu_tanh" (GPT-2's gelu_new), "gelu" (erf, via math.erf: exact), or
    "gelu_tanh_f16" (what ggml's CPU code computes with GGML_GELU_FP16: the tanh GELU read
    from a table indexed by the input rounded to f16, the result itself an f16; inputs
    beyond ±10 pass through as x or 0)."""
    if kind == "gelu_tanh":
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    if kind == "gelu_tanh_f16":
        table = gelu(x.astype(np.float16).astype(np.float64), "gelu_tanh").astype(np.float16).astype(np.float64)
        return np.where(x <= -10, 0.0, np.where(x >= 10, x, table))
    if kind != "gelu":
        raise ValueError(f"unknown activation {kind}")
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))


def reference_logits(m, ids, activation=None):
    """[len(ids), vocab] float64 logits of the Decoder `m` (gguf_export's form) on `ids`."""
    act = activation or m.activation
    w = {k: as_f32(v).astype(np.float64) for k, v in m.tensors.items()}
    n, d, h = len(ids), m.d_model, m.n_heads

    def norm(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + m.norm_eps) * w[p + ".weight"] + w[p + ".bias"]

    def linear(x, p):
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    x = w["wte.weight"][ids] + w["wpe.weight"][:n]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(m.n_layers):
        p = f"h.{i}."
        q, k, v = np.split(linear(norm(x, p + "ln_1"), p + "attn.c_attn"), 3, axis=-1)
        q, k, v = (t.reshape(n, h, d // h).transpose(1, 0, 2) for t in (q, k, v))
        s = q @ k.transpose(0, 2, 1) / np.sqrt(d // h) + mask
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        x = x + linear((a @ v).transpose(1, 0, 2).reshape(n, d), p + "attn.c_proj")
        x = x + linear(gelu(linear(norm(x, p + "ln_2"), p + "mlp.c_fc"), act), p + "mlp.c_proj")
    x = norm(x, "ln_f")
    head = w["wte.weight"] if m.tied else w["lm_head.weight"]
    return x @ head.T


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def token_logprobs(logits, ids):
    """logprob of ids[i+1] given ids[..i], for i = 0 .. n−2 (the first token is context only)."""
    lp = log_softmax(np.asarray(logits, dtype=np.float64))
    return np.array([lp[i, ids[i + 1]] for i in range(len(ids) - 1)])
