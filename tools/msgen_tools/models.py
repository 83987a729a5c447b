"""PyTorch reference models for msgen (DESIGN.md §1-§4).

Five architectures, one config type:

    CSTDecoder          "cst-decoder"          causal Composite Slice Transformer (§1)
    TransformerDecoder  "transformer-decoder"  GPT-2 style pre-norm baseline (§2)
    MSTransEncoder      "ms-trans-encoder"     Multi-Scale Transformer classifier (§3)
    TopDownDecoder      "top-down-decoder"     multi-scale LM, coarse to fine (§8 a)
    BottomUpDecoder     "bottom-up-decoder"    multi-scale LM, fine to coarse (§8 b)

Parameter names are exactly the checkpoint tensor names of §4, so
`model.state_dict()` *is* the checkpoint. Everything here is batched and
vectorised for training; `reference_loops.py` holds the slow token-by-token
versions the tests compare against.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

ARCHITECTURES = ("cst-decoder", "transformer-decoder", "ms-trans-encoder", "top-down-decoder", "bottom-up-decoder")
MULTISCALE = ("top-down-decoder", "bottom-up-decoder")

# -----------------------------------------------------------------------------
# config


@dataclass
class ModelConfig:
    """The keys of config.json (§4). Keys that do not apply to an architecture stay None
    and are not written out; unknown keys are carried along in `extra`."""

    architecture: str
    vocab_size: int
    d_model: int
    n_heads: int
    d_ff: int
    n_layers: int | None = None  # not used by the multi-scale decoders (§8)
    slice_length: int | None = None  # cst-decoder
    extension_ratio: int | None = None  # cst-decoder, alpha in {1, 2, 3}
    max_slices: int | None = None  # cst-decoder, G
    max_positions: int | None = None  # transformer-decoder, N
    eos_token_id: int | None = None
    layer_scales: list | None = None  # ms-trans-encoder: per layer, per head, int or "N/k"
    labels: list | None = None  # ms-trans-encoder: label names
    max_length: int | None = None  # ms-trans-encoder, with [CLS]
    cls_token_id: int | None = None  # ms-trans-encoder
    scales: int | None = None  # top-down / bottom-up: S, the number of scales (§8)
    pool_factor: int | None = None  # top-down / bottom-up: k, scale s has blocks of k^s tokens
    layers_per_scale: list | None = None  # top-down / bottom-up: [n_0, ..., n_{S-1}]
    agg_layers: int | None = None  # bottom-up: token-level blocks after the aggregation
    shared_local_global: bool = True
    tie_embeddings: bool = False
    norm_eps: float = 1e-5
    activation: str = "gelu"
    extra: dict = field(default_factory=dict)

    # --- derived -------------------------------------------------------------
    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def extension(self) -> int:
        """E = (alpha - 1) * L / 2, the left extension of each local window."""
        return (self.extension_ratio - 1) * self.slice_length // 2

    @property
    def context(self) -> int:
        """Tokens the model was built for: N = G*L (cst), max_positions (baseline)."""
        if self.architecture == "cst-decoder":
            return self.max_slices * self.slice_length
        if self.architecture in ("transformer-decoder",) + MULTISCALE:
            return self.max_positions
        return self.max_length

    @property
    def depth(self) -> int:
        """Blocks a token's residual stream goes through (for the init's residual scaling)."""
        if self.architecture == "top-down-decoder":
            return sum(self.layers_per_scale)
        if self.architecture == "bottom-up-decoder":
            return sum(self.layers_per_scale) + self.agg_layers
        return self.n_layers

    def block_size(self, s: int) -> int:
        """b_s = k^s tokens per row of scale s (§8)."""
        return self.pool_factor ** s

    # --- (de)serialisation ---------------------------------------------------
    _PER_ARCH = {
        "cst-decoder": ("slice_length", "extension_ratio", "max_slices", "eos_token_id",
                        "shared_local_global", "tie_embeddings", "norm_eps", "activation"),
        "transformer-decoder": ("max_positions", "eos_token_id", "tie_embeddings",
                                "norm_eps", "activation"),
        "ms-trans-encoder": ("layer_scales", "labels", "max_length", "cls_token_id", "norm_eps"),
        "top-down-decoder": ("scales", "pool_factor", "layers_per_scale", "max_positions", "eos_token_id",
                             "tie_embeddings", "norm_eps", "activation"),
        "bottom-up-decoder": ("scales", "pool_factor", "layers_per_scale", "agg_layers", "max_positions",
                              "eos_token_id", "tie_embeddings", "norm_eps", "activation"),
    }
    _COMMON = ("architecture", "vocab_size", "d_model", "n_layers", "n_heads", "d_ff")

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        cfg = cls(**{k: v for k, v in d.items() if k in known},
                  extra={k: v for k, v in d.items() if k not in known})
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path) -> "ModelConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f))

    _DEFAULTS = {"shared_local_global": True, "tie_embeddings": False, "norm_eps": 1e-5, "activation": "gelu"}

    def to_dict(self, minimal: bool = False) -> dict:
        """config.json contents; minimal=True leaves out keys that equal their §4 default."""
        keys = self._COMMON + self._PER_ARCH[self.architecture]
        d = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        if minimal:
            d = {k: v for k, v in d.items() if not (k in self._DEFAULTS and self._DEFAULTS[k] == v)}
        d.update(self.extra)
        return d

    def validate(self) -> None:
        def need(cond, msg):
            if not cond:
                raise ValueError(f"config: {msg}")

        need(self.architecture in ARCHITECTURES, f"unknown architecture {self.architecture!r}")
        for k in self._COMMON[1:]:
            if k == "n_layers" and self.architecture in MULTISCALE:
                continue  # §8: not used
            need(isinstance(getattr(self, k), int) and getattr(self, k) > 0, f"{k} must be a positive int")
        need(self.d_model % self.n_heads == 0, "d_model must be divisible by n_heads")
        need(self.activation in ("gelu", "gelu_tanh"), f"activation must be gelu or gelu_tanh, got {self.activation!r}")
        if self.architecture == "cst-decoder":
            for k in ("slice_length", "extension_ratio", "max_slices"):
                need(isinstance(getattr(self, k), int), f"{k} is required for cst-decoder")
            need(self.extension_ratio in (1, 2, 3), "extension_ratio must be 1, 2 or 3")
            need((self.extension_ratio - 1) * self.slice_length % 2 == 0,
                 "(extension_ratio-1)*slice_length/2 must be an integer")
        elif self.architecture == "transformer-decoder":
            need(isinstance(self.max_positions, int), "max_positions is required for transformer-decoder")
        elif self.architecture in MULTISCALE:
            keys = ("scales", "pool_factor", "layers_per_scale", "max_positions")
            for k in keys + (("agg_layers",) if self.architecture == "bottom-up-decoder" else ()):
                need(getattr(self, k) is not None, f"{k} is required for {self.architecture}")
            need(isinstance(self.scales, int) and self.scales >= 1, "scales must be an int >= 1")
            need(isinstance(self.pool_factor, int) and self.pool_factor >= 2, "pool_factor must be an int >= 2")
            need(isinstance(self.layers_per_scale, list) and len(self.layers_per_scale) == self.scales,
                 f"layers_per_scale needs one entry per scale ({self.scales})")
            need(all(isinstance(n, int) and n >= 1 for n in self.layers_per_scale), "layers_per_scale entries must be ints >= 1")
            need(self.architecture == "top-down-decoder" or (isinstance(self.agg_layers, int) and self.agg_layers >= 0),
                 "agg_layers must be an int >= 0")
            need(isinstance(self.max_positions, int) and self.max_positions >= 1
                 and self.max_positions % self.block_size(self.scales - 1) == 0,
                 f"max_positions must be a multiple of pool_factor^(scales-1) = {self.block_size(self.scales - 1)}")
        else:
            for k in ("layer_scales", "labels", "max_length", "cls_token_id"):
                need(getattr(self, k) is not None, f"{k} is required for ms-trans-encoder")
            need(len(self.layer_scales) == self.n_layers, "layer_scales needs one list per layer")
            for row in self.layer_scales:
                need(len(row) == self.n_heads, "layer_scales needs one entry per head")
                for s in row:
                    parse_scale(s)  # raises on bad entries


# -----------------------------------------------------------------------------
# shared pieces


def activation_fn(name: str):
    if name == "gelu":
        return F.gelu  # exact, erf based
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    raise ValueError(f"unknown activation {name!r}")


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model)
        self.act = activation_fn(cfg.activation)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def split_heads(x, n_heads):
    """[..., T, D] -> [..., H, T, d_head] (heads moved in front of the time axis)."""
    *lead, T, D = x.shape
    x = x.reshape(*lead, T, n_heads, D // n_heads)
    return x.movedim(-2, -3)


def merge_heads(x):
    """[..., H, T, d_head] -> [..., T, D]."""
    x = x.movedim(-3, -2)
    return x.reshape(*x.shape[:-2], -1)


def masked_attention(q, k, v, mask):
    """softmax(q k^T / sqrt(d_head)) v with `mask` True where attention is allowed.
    Every query row must allow at least one key (we never build empty rows)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


class Decoder(nn.Module):
    """What both decoders share: embeddings, final norm, LM head, weight init."""

    def _init_decoder_common(self, cfg: ModelConfig):
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.norm_f = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        if not cfg.tie_embeddings:
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def init_weights(self, std: float = 0.02):
        # GPT-2 recipe: N(0, 0.02), zero biases, unit norms, and residual output
        # projections scaled by 1/sqrt(2*n_layers) so the residual stream does not
        # grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "norm" in name:
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "fc2.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.cfg.depth))
            else:
                nn.init.normal_(p, 0.0, std)

    def logits(self, h):
        h = self.norm_f(h)
        w = self.embed.weight if self.cfg.tie_embeddings else self.lm_head.weight
        return F.linear(h, w)


# -----------------------------------------------------------------------------
# CST decoder (§1)


class CSTAttention(nn.Module):
    """Composite slice attention: causal local attention over the left-extended
    slice window, then causal global attention over slice summaries, added together
    before the output projection."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D = cfg.d_model
        self.cfg = cfg
        self.q_proj, self.k_proj = nn.Linear(D, D), nn.Linear(D, D)
        self.v_proj, self.o_proj = nn.Linear(D, D), nn.Linear(D, D)
        if not cfg.shared_local_global:
            self.gq_proj, self.gk_proj, self.gv_proj = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)

    def global_projs(self):
        if self.cfg.shared_local_global:
            return self.q_proj, self.k_proj, self.v_proj
        return self.gq_proj, self.gk_proj, self.gv_proj

    def forward(self, u, P_l, P_g):
        a = self.local(u, P_l)
        g = self.global_(a, P_g)
        return self.o_proj(a + g)

    def local(self, u, P_l):
        cfg, H = self.cfg, self.cfg.n_heads
        B, T, D = u.shape
        L, E = cfg.slice_length, cfg.extension
        W = E + L  # keys per window
        S = -(-T // L)  # slices, the last one possibly partial
        Tp = S * L

        # Positions enter q/k linearly, so project the tables once instead of
        # adding them to u inside every window: (u + p) W^T + b = (u W^T + b) + p W^T.
        pos_q = F.linear(P_l[E:], self.q_proj.weight)  # [L, D], offsets r inside the slice
        pos_k = F.linear(P_l, self.k_proj.weight)  # [W, D], positions in the window

        q = F.pad(self.q_proj(u), (0, 0, 0, Tp - T)).view(B, S, L, D) + pos_q
        # Window t holds tokens tL-E .. tL+L-1: pad E in front and cut overlapping
        # windows with unfold. Padded keys are masked below, never attended.
        def windows(x):
            x = F.pad(x, (0, 0, E, Tp - T))  # [B, E+Tp, D]
            return x.unfold(1, W, L).transpose(-1, -2)  # [B, S, W, D]

        k = windows(self.k_proj(u)) + pos_k
        v = windows(self.v_proj(u))

        # query (t, r) is token i = tL+r, key w of window t is token j = tL-E+w:
        # allowed iff j >= 0 (exists) and j <= i (causal).
        t = torch.arange(S, device=u.device).view(S, 1, 1)
        r = torch.arange(L, device=u.device).view(1, L, 1)
        w = torch.arange(W, device=u.device).view(1, 1, W)
        mask = (t * L - E + w >= 0) & (w <= E + r)  # [S, L, W]

        a = masked_attention(split_heads(q, H), split_heads(k, H), split_heads(v, H), mask.unsqueeze(1))
        return merge_heads(a).reshape(B, Tp, D)[:, :T]  # [B, S, H, L, dh] -> [B, T, D]

    def global_(self, a, P_g):
        cfg, H = self.cfg, self.cfg.n_heads
        B, T, D = a.shape
        L, G = cfg.slice_length, cfg.max_slices
        S = -(-T // L)
        C = T // L  # complete slices: the only ones that have a summary
        if S <= 1 or G == 1:  # slice 0 sees nothing (g_0 = 0); G = 1 keeps no summaries
            return torch.zeros_like(a)
        gq_proj, gk_proj, gv_proj = self.global_projs()

        m = a[:, : C * L].reshape(B, C, L, D).mean(2)  # [B, C, D] slice summaries

        # Slice t (1..S-1) queries with m_{t-1} and attends to summaries s <= t-1.
        # Past the context only the last G-1 summaries are kept, re-indexed from 0
        # (§1 "Past the context"); inside it off_t = 0 and this is the plain formula.
        t = torch.arange(1, S, device=a.device).view(-1, 1)  # [S-1, 1]
        s = torch.arange(C, device=a.device).view(1, -1)  # [1, C]
        off = (t - (G - 1)).clamp(min=0)
        allowed = (s >= off) & (s <= t - 1)  # [S-1, C]
        pos_idx = (s - off).clamp(0, G - 1)  # P_g row of key s as seen from slice t

        q_idx = (t - 1 - off).squeeze(1)  # P_g row of the query
        gq = gq_proj(m[:, : S - 1]) + F.linear(P_g[q_idx], gq_proj.weight)  # [B, S-1, D]
        gk_raw = gk_proj(m)  # [B, C, D] key without its position
        gk_pos = F.linear(P_g, gk_proj.weight)  # [G, D]
        gv = gv_proj(m)

        qh = split_heads(gq, H)  # [B, H, S-1, dh]
        scores = qh @ split_heads(gk_raw, H).transpose(-1, -2)  # [B, H, S-1, C]
        pos_scores = qh @ split_heads(gk_pos, H).transpose(-1, -2)  # [B, H, S-1, G]
        scores = scores + pos_scores.gather(-1, pos_idx.expand(B, H, -1, -1))
        scores = (scores / math.sqrt(cfg.d_head)).masked_fill(~allowed, float("-inf"))
        g = merge_heads(torch.softmax(scores, -1) @ split_heads(gv, H))  # [B, S-1, D]

        g = torch.cat([torch.zeros_like(g[:, :1]), g], dim=1)  # g_0 = 0
        return g.repeat_interleave(L, dim=1)[:, :T]  # broadcast to the slice's tokens


class CSTBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = CSTAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(dropout)

    def forward(self, h, P_l, P_g):
        h = h + self.drop(self.attn(self.norm1(h), P_l, P_g))
        return h + self.drop(self.mlp(self.norm2(h)))


class CSTDecoder(Decoder):
    """Causal CST language model. forward(ids [B, T]) -> logits [B, T, V].

    T may be anything up to N = G*L (a trailing partial slice is fine). Longer
    inputs follow the §1 past-the-context rule (last G-1 summaries, re-indexed),
    which is what the incremental runtime does; training never goes there."""

    def __init__(self, cfg: ModelConfig, dropout: float = 0.0):
        super().__init__()
        assert cfg.architecture == "cst-decoder"
        self._init_decoder_common(cfg)
        self.pos_local = nn.Embedding(cfg.extension + cfg.slice_length, cfg.d_model)
        self.pos_global = nn.Embedding(cfg.max_slices, cfg.d_model)
        self.layers = nn.ModuleList(CSTBlock(cfg, dropout) for _ in range(cfg.n_layers))
        self.drop = nn.Dropout(dropout)
        self.init_weights()

    def forward(self, ids):
        h = self.drop(self.embed(ids))  # no input positional embedding (MS-VIPE only)
        for layer in self.layers:
            h = layer(h, self.pos_local.weight, self.pos_global.weight)
        return self.logits(h)


# -----------------------------------------------------------------------------
# baseline decoder (§2)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D = cfg.d_model
        self.n_heads = cfg.n_heads
        self.q_proj, self.k_proj = nn.Linear(D, D), nn.Linear(D, D)
        self.v_proj, self.o_proj = nn.Linear(D, D), nn.Linear(D, D)

    def forward(self, u):
        H = self.n_heads
        q, k, v = (split_heads(p(u), H) for p in (self.q_proj, self.k_proj, self.v_proj))
        # scale defaults to 1/sqrt(d_head), as in §1
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(merge_heads(y))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(dropout)

    def forward(self, h):
        h = h + self.drop(self.attn(self.norm1(h)))
        return h + self.drop(self.mlp(self.norm2(h)))


class TransformerDecoder(Decoder):
    """GPT-2 style pre-norm decoder. forward(ids [B, T <= max_positions]) -> logits."""

    def __init__(self, cfg: ModelConfig, dropout: float = 0.0):
        super().__init__()
        assert cfg.architecture == "transformer-decoder"
        self._init_decoder_common(cfg)
        self.pos = nn.Embedding(cfg.max_positions, cfg.d_model)
        self.layers = nn.ModuleList(TransformerBlock(cfg, dropout) for _ in range(cfg.n_layers))
        self.drop = nn.Dropout(dropout)
        self.init_weights()

    def forward(self, ids):
        T = ids.shape[1]
        if T > self.cfg.max_positions:
            raise ValueError(f"sequence of {T} tokens exceeds max_positions={self.cfg.max_positions}")
        h = self.drop(self.embed(ids) + self.pos.weight[:T])
        for layer in self.layers:
            h = layer(h)
        return self.logits(h)


# -----------------------------------------------------------------------------
# multi-scale decoders (§8 a, b)


def pool(y, k: int):
    """Pool(y) of §8: row c is the mean of rows c*k .. c*k+k-1 of y [B, R, D]; a
    trailing incomplete group makes no row."""
    B, R, D = y.shape
    n = R // k
    return y[:, : n * k].reshape(B, n, k, D).mean(2)  # n = 0 gives [B, 0, D]


def upsample(y, factor: int, rows: int):
    """Up of §8 from a coarser sequence y [B, R, D] to `rows` finer rows, `factor` =
    k^(s - s') finer rows per coarse row: row p reads y[(p+1) // factor - 1], the newest
    coarse row whose block ends at or before p's last token, and 0 where there is none."""
    idx = (torch.arange(rows, device=y.device) + 1) // factor - 1
    padded = torch.cat([y.new_zeros(y.shape[0], 1, y.shape[2]), y], 1)  # row 0 stands for "none"
    return padded[:, idx + 1]


class ScaleStack(nn.Module):
    """One scale of §8: its learned positions `pos` [N / b_s, D] and its pre-norm GPT-2
    blocks `layers`, run causally over the rows of that scale."""

    def __init__(self, cfg: ModelConfig, s: int, n_layers: int, dropout: float = 0.0):
        super().__init__()
        self.pos = nn.Embedding(cfg.max_positions // cfg.block_size(s), cfg.d_model)
        self.layers = nn.ModuleList(TransformerBlock(cfg, dropout) for _ in range(n_layers))

    def forward(self, z):
        """z [B, R, D] without positions -> y [B, R, D]; R = 0 passes through."""
        if z.shape[1] == 0:
            return z
        h = z + self.pos.weight[: z.shape[1]]
        for layer in self.layers:
            h = layer(h)
        return h


class MultiScaleDecoder(Decoder):
    """What top-down and bottom-up share: the embedding, one ScaleStack per scale under
    `scales.{s}`, the final norm and head, the context check."""

    def _init_scales(self, cfg: ModelConfig, dropout: float):
        self._init_decoder_common(cfg)
        self.scales = nn.ModuleList(ScaleStack(cfg, s, n, dropout) for s, n in enumerate(cfg.layers_per_scale))
        self.drop = nn.Dropout(dropout)

    def _check(self, ids):
        T = ids.shape[1]
        if T > self.cfg.max_positions:
            raise ValueError(f"sequence of {T} tokens exceeds max_positions={self.cfg.max_positions}")
        return T


class TopDownDecoder(MultiScaleDecoder):
    """§8 (a), coarse to fine: scale s (from the coarsest down) reads the mean token
    embedding of each of its blocks plus the upsampled output of the scale above it; the
    tokens read scale 1. forward(ids [B, T <= max_positions]) -> logits [B, T, V]."""

    def __init__(self, cfg: ModelConfig, dropout: float = 0.0):
        super().__init__()
        assert cfg.architecture == "top-down-decoder"
        self._init_scales(cfg, dropout)
        self.init_weights()

    def forward(self, ids):
        T = self._check(ids)
        cfg, k = self.cfg, self.cfg.pool_factor
        e = self.drop(self.embed(ids))
        above = None  # y^{s+1}
        for s in range(cfg.scales - 1, 0, -1):
            b = cfg.block_size(s)
            R = T // b
            z = pool(e, b)  # MeanOfTokens_s: the mean of each block's b_s embeddings
            if above is not None:
                z = z + upsample(above, k, R)
            above = self.scales[s](z)
        z0 = e if above is None else e + upsample(above, k, T)
        return self.logits(self.scales[0](z0))


class BottomUpDecoder(MultiScaleDecoder):
    """§8 (b), fine to coarse: the tokens through scale 0, each coarser scale over the
    pooled rows of the one below; then every token adds A_s·Up(y^s) + a_s of each coarser
    scale and goes through `agg_layers` more token-level blocks."""

    def __init__(self, cfg: ModelConfig, dropout: float = 0.0):
        super().__init__()
        assert cfg.architecture == "bottom-up-decoder"
        self._init_scales(cfg, dropout)
        self.agg = nn.ModuleDict({str(s): nn.Linear(cfg.d_model, cfg.d_model) for s in range(1, cfg.scales)})
        self.agg_layers = nn.ModuleList(TransformerBlock(cfg, dropout) for _ in range(cfg.agg_layers))
        self.init_weights()

    def forward(self, ids):
        T = self._check(ids)
        cfg, k = self.cfg, self.cfg.pool_factor
        y = self.scales[0](self.drop(self.embed(ids)))
        h, below = y, y
        for s in range(1, cfg.scales):
            below = self.scales[s](pool(below, k))
            h = h + self.agg[str(s)](upsample(below, cfg.block_size(s), T))  # the bias even where Up is 0
        for layer in self.agg_layers:
            h = layer(h)
        return self.logits(h)


# -----------------------------------------------------------------------------
# MS-Trans encoder (§3)


def parse_scale(s) -> tuple[str, int]:
    """An entry of layer_scales: an odd int ("fixed", w) or "N/k" ("ratio", k)."""
    if isinstance(s, bool):
        raise ValueError(f"bad scale {s!r}")
    if isinstance(s, int):
        if s < 1 or s % 2 == 0:
            raise ValueError(f"fixed scale must be an odd int >= 1, got {s}")
        return ("fixed", s)
    if isinstance(s, str) and s.startswith("N/") and s[2:].isdigit() and int(s[2:]) > 0:
        return ("ratio", int(s[2:]))
    raise ValueError(f"bad scale {s!r}: expected an odd int or 'N/k'")


def resolve_scale(s, n: int) -> int:
    """Window size for a sequence of n tokens (with [CLS]): "N/k" -> n // k, rounded
    down to an odd number, at least 1."""
    kind, val = parse_scale(s)
    if kind == "fixed":
        return val
    w = n // val
    if w % 2 == 0:
        w -= 1
    return max(w, 1)


def alpha_rule(alpha: float, scales: list, n_heads: int, n_layers: int) -> list[list[int]]:
    """Heads per candidate scale for each layer (MS-Trans Eq. 11-12, as written).

    z^l_k = 0 for the last layer or the last scale, else z^l_{k+1} + alpha/l, i.e.
    z^l_k = (|Omega|-1-k) * alpha / l with l = 1..n_layers; n^l = softmax(z^l) * n_heads.
    Real-valued counts are rounded by largest remainder (ties -> smaller scale) so
    every layer gets exactly n_heads heads."""
    K = len(scales)
    counts = []
    for l in range(1, n_layers + 1):
        z = torch.zeros(K, dtype=torch.float64)
        if l < n_layers:
            z = (K - 1 - torch.arange(K, dtype=torch.float64)) * alpha / l
        share = torch.softmax(z, 0) * n_heads
        n = [int(math.floor(x)) for x in share.tolist()]
        rema = [x - f for x, f in zip(share.tolist(), n)]
        for k in sorted(range(K), key=lambda k: (-rema[k], k))[: n_heads - sum(n)]:
            n[k] += 1
        counts.append(n)
    return counts


def layer_scales_from_alpha(alpha, scales, n_heads, n_layers) -> list[list]:
    """alpha_rule expanded into the config's layer_scales: one scale per head."""
    return [[s for s, c in zip(scales, row) for _ in range(c)]
            for row in alpha_rule(alpha, scales, n_heads, n_layers)]


class MultiScaleSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, scales: list):
        super().__init__()
        D = cfg.d_model
        self.n_heads = cfg.n_heads
        self.scales = list(scales)
        self.q_proj, self.k_proj = nn.Linear(D, D), nn.Linear(D, D)
        self.v_proj, self.o_proj = nn.Linear(D, D), nn.Linear(D, D)

    def forward(self, x, n):
        """x [B, S, D] (padded), n [B] true lengths with [CLS]."""
        S = x.shape[1]
        # half width (w-1)/2 per sequence and head; "N/k" depends on each length
        half = torch.tensor([[(resolve_scale(s, int(nb)) - 1) // 2 for s in self.scales] for nb in n.tolist()],
                            device=x.device)  # [B, H]
        i = torch.arange(S, device=x.device).view(S, 1)
        j = torch.arange(S, device=x.device).view(1, S)
        key_ok = j < n.view(-1, 1, 1, 1)  # [B, 1, 1, S]
        mask = ((i - j).abs() <= half[:, :, None, None]) & key_ok  # [B, H, S, S]
        # padded query rows would be empty: let them look at [CLS]; they are dropped anyway
        mask = mask | ((i >= n.view(-1, 1, 1, 1)) & (j == 0))
        q, k, v = (split_heads(p(x), self.n_heads) for p in (self.q_proj, self.k_proj, self.v_proj))
        return self.o_proj(merge_heads(masked_attention(q, k, v, mask)))


class MSTransLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, scales: list, dropout: float = 0.0):
        super().__init__()
        self.attn = MultiScaleSelfAttention(cfg, scales)
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, n):
        # post-norm, no feed-forward sublayer (MS-Trans Eq. 10)
        return self.norm(x + self.drop(F.relu(self.attn(x, n))))


class Classifier(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(2 * cfg.d_model, cfg.d_ff)
        self.fc2 = nn.Linear(cfg.d_ff, len(cfg.labels))

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class MSTransEncoder(nn.Module):
    """MS-Trans text classifier. forward(ids [B, n], lengths [B] or None) -> logits
    [B, labels]. ids exclude [CLS] (it is prepended here) and are right-padded when
    lengths is given."""

    def __init__(self, cfg: ModelConfig, dropout: float = 0.0):
        super().__init__()
        assert cfg.architecture == "ms-trans-encoder"
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(MSTransLayer(cfg, sc, dropout) for sc in cfg.layer_scales)
        self.classifier = Classifier(cfg)

    def forward(self, ids, lengths=None):
        B, n_tok = ids.shape
        if lengths is None:
            lengths = torch.full((B,), n_tok, dtype=torch.long, device=ids.device)
        if int(lengths.min()) < 1:
            raise ValueError("empty text cannot be classified")
        if n_tok + 1 > self.cfg.max_length:
            raise ValueError(f"{n_tok}+1 tokens exceed max_length={self.cfg.max_length}; use truncate_for_encoder")
        cls = torch.full((B, 1), self.cfg.cls_token_id, dtype=ids.dtype, device=ids.device)
        x = self.embed(torch.cat([cls, ids], 1))  # no positional embedding
        n = lengths + 1
        for layer in self.layers:
            x = layer(x, n)
        # sentence vector: [CLS] state and a max over the real tokens 1..n-1
        j = torch.arange(x.shape[1], device=x.device).view(1, -1, 1)
        real = (j >= 1) & (j < n.view(-1, 1, 1))
        pooled = x.masked_fill(~real, float("-inf")).amax(1)
        return self.classifier(torch.cat([x[:, 0], pooled], -1))


def truncate_for_encoder(ids: list[int], cfg: ModelConfig) -> list[int]:
    """Cap ids so that [CLS] + ids fits in max_length, noting it on stderr (§3)."""
    if not ids:
        raise ValueError("empty text cannot be classified")
    keep = cfg.max_length - 1
    if len(ids) > keep:
        print(f"note: input truncated from {len(ids)} to {keep} tokens", file=sys.stderr)
        ids = ids[:keep]
    return ids


# -----------------------------------------------------------------------------


def build_model(cfg: ModelConfig | dict, dropout: float = 0.0) -> nn.Module:
    if isinstance(cfg, dict):
        cfg = ModelConfig.from_dict(cfg)
    cls = {"cst-decoder": CSTDecoder, "transformer-decoder": TransformerDecoder,
           "ms-trans-encoder": MSTransEncoder, "top-down-decoder": TopDownDecoder,
           "bottom-up-decoder": BottomUpDecoder}[cfg.architecture]
    return cls(cfg, dropout=dropout)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
