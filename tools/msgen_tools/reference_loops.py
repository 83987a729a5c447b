"""Slow, obviously-correct reference forwards, written token by token and slice by
slice straight from the DESIGN.md formulas. Used only by tests, to check the
vectorised models in models.py. One sequence at a time; every function takes a
model (for its weights) and a list of token ids and returns logits.

Nothing here is clever on purpose: each line should be checkable against §1-§3.
"""

from __future__ import annotations

import math

import torch

from .models import activation_fn, resolve_scale


def lin(x, layer, weight=None, bias=None):
    """y = W x + b for one vector, W stored [out, in] as in PyTorch."""
    W = layer.weight if weight is None else weight
    b = layer.bias if bias is None else bias
    y = W @ x
    return y if b is None else y + b


def layer_norm(x, ln):
    mu = x.mean()
    var = ((x - mu) ** 2).mean()
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def attend(q, keys, values, n_heads):
    """concat over heads of softmax_j(q_h . k_j,h / sqrt(d_head)) v_j,h.
    q: [D]; keys, values: lists of [D]."""
    D = q.shape[0]
    dh = D // n_heads
    out = []
    for h in range(n_heads):
        sl = slice(h * dh, (h + 1) * dh)
        scores = torch.stack([q[sl] @ k[sl] / math.sqrt(dh) for k in keys])
        p = torch.softmax(scores, 0)
        out.append(sum(p[n] * values[n][sl] for n in range(len(values))))
    return torch.cat(out)


def lm_logits(model, h):
    cfg = model.cfg
    W_out = model.embed.weight if cfg.tie_embeddings else model.lm_head.weight
    return torch.stack([W_out @ layer_norm(x, model.norm_f) for x in h])


def mlp(block, x, act):
    return lin(act(lin(x, block.mlp.fc1)), block.mlp.fc2)


@torch.no_grad()
def cst_forward_loop(model, ids):
    cfg = model.cfg
    L, E, G, H = cfg.slice_length, cfg.extension, cfg.max_slices, cfg.n_heads
    T = len(ids)
    P_l, P_g = model.pos_local.weight, model.pos_global.weight
    act = activation_fn(cfg.activation)

    h = [model.embed.weight[x].clone() for x in ids]
    for blk in model.layers:
        at = blk.attn
        gq_p, gk_p, gv_p = at.global_projs()
        u = [layer_norm(x, blk.norm1) for x in h]

        # local attention over the left-extended slice, causal
        a = []
        for i in range(T):
            t, r = divmod(i, L)
            q = lin(u[i] + P_l[E + r], at.q_proj)
            js = range(max(0, t * L - E), i + 1)
            keys = [lin(u[j] + P_l[E + j - t * L], at.k_proj) for j in js]
            vals = [lin(u[j], at.v_proj) for j in js]
            a.append(attend(q, keys, vals, H))

        # summaries of complete slices only
        m = [sum(a[s * L:(s + 1) * L]) / L for s in range(T // L)]

        # global attention: slice t queries with m_{t-1}, attends to summaries <= t-1.
        # Past the context (t > G-1) keep the last G-1 summaries, re-indexed from 0.
        n_slices = -(-T // L)
        g = [torch.zeros_like(h[0])]  # g_0 = 0
        for t in range(1, n_slices):
            first = max(0, t - (G - 1))
            kept = list(range(first, t))
            if not kept:  # only when G = 1: no summaries are kept past the context
                g.append(torch.zeros_like(h[0]))
                continue
            gq = lin(m[t - 1] + P_g[t - 1 - first], gq_p)
            gk = [lin(m[s] + P_g[s - first], gk_p) for s in kept]
            gv = [lin(m[s], gv_p) for s in kept]
            g.append(attend(gq, gk, gv, H))

        # compose, then the MLP sublayer
        for i in range(T):
            h[i] = h[i] + lin(a[i] + g[i // L], at.o_proj)
            h[i] = h[i] + mlp(blk, layer_norm(h[i], blk.norm2), act)
    return lm_logits(model, h)


@torch.no_grad()
def transformer_forward_loop(model, ids):
    cfg = model.cfg
    H = cfg.n_heads
    act = activation_fn(cfg.activation)
    h = [model.embed.weight[x] + model.pos.weight[i] for i, x in enumerate(ids)]
    for blk in model.layers:
        at = blk.attn
        u = [layer_norm(x, blk.norm1) for x in h]
        keys = [lin(x, at.k_proj) for x in u]
        vals = [lin(x, at.v_proj) for x in u]
        for i in range(len(ids)):
            a = attend(lin(u[i], at.q_proj), keys[: i + 1], vals[: i + 1], H)
            h[i] = h[i] + lin(a, at.o_proj)
            h[i] = h[i] + mlp(blk, layer_norm(h[i], blk.norm2), act)
    return lm_logits(model, h)


@torch.no_grad()
def mstrans_forward_loop(model, ids):
    """Logits [labels] for one text (ids without [CLS])."""
    cfg = model.cfg
    H, dh = cfg.n_heads, cfg.d_head
    x = [model.embed.weight[t] for t in [cfg.cls_token_id] + list(ids)]
    n = len(x)
    for layer in model.layers:
        at = layer.attn
        q = [lin(v, at.q_proj) for v in x]
        k = [lin(v, at.k_proj) for v in x]
        v_ = [lin(v, at.v_proj) for v in x]
        new = []
        for i in range(n):
            heads = []
            for h in range(H):
                half = (resolve_scale(at.scales[h], n) - 1) // 2
                js = [j for j in range(n) if abs(i - j) <= half]
                sl = slice(h * dh, (h + 1) * dh)
                s = torch.stack([q[i][sl] @ k[j][sl] / math.sqrt(dh) for j in js])
                p = torch.softmax(s, 0)
                heads.append(sum(p[c] * v_[j][sl] for c, j in enumerate(js)))
            y = torch.relu(lin(torch.cat(heads), at.o_proj))
            new.append(layer_norm(x[i] + y, layer.norm))
        x = new
    pooled = torch.stack(x[1:]).max(0).values
    feat = torch.cat([x[0], pooled])
    c = model.classifier
    return lin(torch.relu(lin(feat, c.fc1)), c.fc2)


def blocks_loop(layers, xs, act):
    """§2's pre-norm GPT-2 blocks over a list of row vectors, row by row: row i attends
    to rows 0..i of its own sequence."""
    h = [x.clone() for x in xs]
    for blk in layers:
        at = blk.attn
        H = at.n_heads
        u = [layer_norm(x, blk.norm1) for x in h]
        keys = [lin(x, at.k_proj) for x in u]
        vals = [lin(x, at.v_proj) for x in u]
        for i in range(len(h)):
            a = attend(lin(u[i], at.q_proj), keys[: i + 1], vals[: i + 1], H)
            h[i] = h[i] + lin(a, at.o_proj)
            h[i] = h[i] + mlp(blk, layer_norm(h[i], blk.norm2), act)
    return h


@torch.no_grad()
def top_down_forward_loop(model, ids):
    """§8 (a) row by row: for s = S-1 .. 1, row c of scale s is the mean of the token
    embeddings of block c, plus its position, plus Up of the scale above; then the tokens."""
    cfg = model.cfg
    k, D, T = cfg.pool_factor, cfg.d_model, len(ids)
    act = activation_fn(cfg.activation)
    e = [model.embed.weight[x].clone() for x in ids]
    zero = torch.zeros(D, dtype=e[0].dtype)
    above = None
    for s in range(cfg.scales - 1, 0, -1):
        b, sc = k ** s, model.scales[s]
        z = []
        for c in range(T // b):
            row = sum(e[c * b:(c + 1) * b]) / b + sc.pos.weight[c]
            if above is not None:
                j = (c + 1) // k - 1
                row = row + (above[j] if j >= 0 else zero)
            z.append(row)
        above = blocks_loop(sc.layers, z, act)
    z0 = []
    for i in range(T):
        j = (i + 1) // k - 1
        up = above[j] if above is not None and j >= 0 else zero
        z0.append(e[i] + model.scales[0].pos.weight[i] + up)
    return lm_logits(model, blocks_loop(model.scales[0].layers, z0, act))


@torch.no_grad()
def bottom_up_forward_loop(model, ids):
    """§8 (b) row by row: tokens through scale 0; row c of scale s is the mean of rows
    c*k .. c*k+k-1 of scale s-1 plus its position; each token adds, per coarser scale,
    A_s . (newest complete row of s, or 0) + a_s; then the aggregation blocks."""
    cfg = model.cfg
    k, D, T = cfg.pool_factor, cfg.d_model, len(ids)
    act = activation_fn(cfg.activation)
    sc0 = model.scales[0]
    y = blocks_loop(sc0.layers, [model.embed.weight[x] + sc0.pos.weight[i] for i, x in enumerate(ids)], act)
    ys = [y]
    for s in range(1, cfg.scales):
        prev, sc = ys[-1], model.scales[s]
        z = [sum(prev[c * k:(c + 1) * k]) / k + sc.pos.weight[c] for c in range(len(prev) // k)]
        ys.append(blocks_loop(sc.layers, z, act))
    zero = torch.zeros(D, dtype=y[0].dtype)
    h = []
    for i in range(T):
        x = y[i].clone()
        for s in range(1, cfg.scales):
            c = (i + 1) // k ** s - 1
            x = x + lin(ys[s][c] if c >= 0 else zero, model.agg[str(s)])
        h.append(x)
    return lm_logits(model, blocks_loop(model.agg_layers, h, act))
