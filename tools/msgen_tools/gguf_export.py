"""Write a GPT-2-style decoder as a GGUF file that llama.cpp runs (its "gpt2" architecture).

    .venv/bin/python -m msgen_tools.gguf_export SOURCE -o OUT.gguf [--dtype f32|f16|q8_0]

SOURCE is either a Hugging Face GPT-2 checkpoint directory (`save_pretrained`:
config.json, model.safetensors, tokenizer.json) or an msgen transformer-decoder `.msz`
file (e.g. models/baseline-kjv.msz). Both are first brought to one form, HF GPT-2 tensor
names with every matrix [out, in] (HF's Conv1D stores [in, out]; msgen already stores
[out, in] and keeps q, k, v apart, so they are fused into c_attn here), then named with
`gguf.get_tensor_name_map`, the same table llama.cpp's own converter uses.

dtypes: f32 (everything), f16 and q8_0 (matrices; vectors stay f32, as in llama.cpp's
converter and in `msgen convert --dtype q8`). A q8 `.msz` tensor is copied block for
block: msgen's q8 block (f16 scale, 32 int8) is ggml's block_q8_0, so both runtimes read
the very same bytes; other sources are quantised with `gguf.quants.quantize`. A tied
model gets no `output.weight` (llama.cpp then reuses `token_embd.weight`).

The tokenizer goes in from tokenizer.json (byte-level BPE: tokens by id, merges, token
types, `tokenizer.ggml.pre` = "gpt-2"); eos = bos = the config's eos token and llama.cpp
is told not to add a BOS token, as msgen never does.

Known difference: llama.cpp's gpt2 graph always uses the tanh GELU (through an f16
lookup table), so a model trained with the erf GELU (`"activation": "gelu"`, e.g. the
bundled baseline) runs there with a slightly different activation; `main` warns.
"""
import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import msz

DTYPES = ("f32", "f16", "q8_0")
Q8_BLOCK = msz.Q8_BLOCK


@dataclass
class Q8Blocks:
    """A q8 tensor kept as its blocks: `data` is uint8 [rows, cols/32*34], `shape` the logical one."""
    data: np.ndarray
    shape: tuple


@dataclass
class Decoder:
    """A GPT-2 decoder: hyper-parameters, tensors under HF GPT-2 names, matrices [out, in]."""
    vocab_size: int
    context: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    norm_eps: float
    activation: str  # "gelu_tanh" or "gelu" (erf)
    eos_token_id: int | None
    tokenizer_json: str | None
    tensors: dict = field(default_factory=dict)  # name -> np.ndarray (f32/f16) or Q8Blocks

    @property
    def tied(self):
        return "lm_head.weight" not in self.tensors


# ---------------------------------------------------------------------------------------
# Sources

# HF GPT-2 matrices stored as Conv1D, i.e. [in, out].
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu"}


def from_hf_dir(path):
    """A Hugging Face GPT-2 `save_pretrained` directory."""
    from safetensors.numpy import load_file

    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())
    if cfg.get("model_type") != "gpt2":
        raise ValueError(f"{path}/config.json is not a GPT-2 config (model_type {cfg.get('model_type')!r})")
    act = cfg.get("activation_function", "gelu_new")
    if act not in HF_ACTIVATIONS:
        raise ValueError(f"GPT-2 activation_function {act!r} is not supported")
    weights = path / "model.safetensors"
    if not weights.exists():
        raise ValueError(f"{path} has no model.safetensors (save_pretrained(..., safe_serialization=True))")
    tensors = {}
    for name, t in load_file(str(weights)).items():
        name = name.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # old checkpoints keep the causal mask as a buffer
        tensors[name] = np.ascontiguousarray(t.T) if name.endswith(CONV1D) else t
    tied = cfg.get("tie_word_embeddings", True)
    if tied:
        tensors.pop("lm_head.weight", None)
    tok = path / "tokenizer.json"
    d = cfg["n_embd"]
    return Decoder(vocab_size=cfg["vocab_size"], context=cfg["n_positions"], d_model=d, n_layers=cfg["n_layer"],
                   n_heads=cfg["n_head"], d_ff=cfg.get("n_inner") or 4 * d, norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
                   activation=HF_ACTIVATIONS[act], eos_token_id=cfg.get("eos_token_id"),
                   tokenizer_json=tok.read_text() if tok.exists() else None, tensors=tensors)


# msgen name (DESIGN §4) -> HF GPT-2 name; q, k, v are fused separately.
MSGEN_TO_HF = {
    "embed.weight": "wte.weight", "pos.weight": "wpe.weight",
    "norm_f.weight": "ln_f.weight", "norm_f.bias": "ln_f.bias", "lm_head.weight": "lm_head.weight",
}
MSGEN_LAYER_TO_HF = {
    "norm1": "ln_1", "norm2": "ln_2", "attn.o_proj": "attn.c_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
}


def _msz_tensor(f, name):
    """One .msz tensor: f32/f16 as numpy, bf16 widened to f32, q8 as its blocks."""
    t = f.info(name)
    if t.dtype == "q8":
        rows = t.count // t.shape[-1]
        return Q8Blocks(np.frombuffer(f.raw(name), dtype=np.uint8).reshape(rows, -1), tuple(t.shape))
    return f.array(name)


def _concat_rows(parts):
    """Stacks [out, in] matrices (or vectors) along the first axis, keeping q8 blocks as they are."""
    if all(isinstance(p, Q8Blocks) for p in parts):
        return Q8Blocks(np.concatenate([p.data for p in parts]), (sum(p.shape[0] for p in parts),) + parts[0].shape[1:])
    arrays = [as_f32(p) if any(isinstance(q, Q8Blocks) for q in parts) else p for p in parts]
    if len({a.dtype for a in arrays}) > 1:
        arrays = [a.astype(np.float32) for a in arrays]
    return np.concatenate(arrays)


def from_msz(path):
    """An msgen transformer-decoder .msz (any stored dtype)."""
    f = msz.MSZFile(path)
    if f.architecture != "transformer-decoder":
        raise ValueError(f"{path} is a {f.architecture} model; llama.cpp's gpt2 architecture fits only transformer-decoder")
    c = f.config
    names = {t.name for t in f.tensors}
    tensors = {}
    for name in names:
        if name in MSGEN_TO_HF:
            tensors[MSGEN_TO_HF[name]] = _msz_tensor(f, name)
    for i in range(c["n_layers"]):
        p, h = f"layers.{i}.", f"h.{i}."
        for ours, theirs in MSGEN_LAYER_TO_HF.items():
            for kind in ("weight", "bias"):
                tensors[f"{h}{theirs}.{kind}"] = _msz_tensor(f, f"{p}{ours}.{kind}")
        for kind in ("weight", "bias"):
            tensors[f"{h}attn.c_attn.{kind}"] = _concat_rows([_msz_tensor(f, f"{p}attn.{x}_proj.{kind}") for x in "qkv"])
    if c.get("tie_embeddings", False):
        tensors.pop("lm_head.weight", None)
    return Decoder(vocab_size=c["vocab_size"], context=c["max_positions"], d_model=c["d_model"], n_layers=c["n_layers"],
                   n_heads=c["n_heads"], d_ff=c["d_ff"], norm_eps=c.get("norm_eps", 1e-5),
                   activation=c.get("activation", "gelu"), eos_token_id=c.get("eos_token_id"),
                   tokenizer_json=f.tokenizer_json, tensors=tensors)


def load(source):
    source = Path(source)
    return from_msz(source) if source.is_file() else from_hf_dir(source)


# ---------------------------------------------------------------------------------------
# Tokenizer

def tokenizer_vocab(tokenizer_json, vocab_size):
    """(tokens by id, token types, merges) of a byte-level BPE tokenizer.json, padded with
    unused tokens up to the model's vocab_size, as llama.cpp's converter does."""
    import gguf

    tj = json.loads(tokenizer_json)
    model = tj["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"tokenizer is {model.get('type')}, not byte-level BPE")
    by_id = {i: (tok, gguf.TokenType.NORMAL) for tok, i in model["vocab"].items()}
    for added in tj.get("added_tokens", []):
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        by_id[added["id"]] = (added["content"], kind)
    if max(by_id) >= vocab_size:
        raise ValueError(f"tokenizer has token id {max(by_id)}, the model's vocab_size is {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        tok, kind = by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(tok)
        types.append(kind)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


# ---------------------------------------------------------------------------------------
# Writing

def as_f32(x):
    if isinstance(x, Q8Blocks):
        return msz.dequantize_q8(x.data.tobytes(), x.shape)
    return x.astype(np.float32, copy=False)


def encode(x, dtype):
    """(array, raw ggml type or None) of one tensor in the file's dtype. Vectors stay f32;
    q8_0 needs rows that are whole blocks, other matrices stay f32 (as msgen's q8 does)."""
    import gguf

    shape = x.shape
    if len(shape) < 2 or dtype == "f32":
        return as_f32(x), None
    if dtype == "f16":
        return (x if isinstance(x, np.ndarray) and x.dtype == np.float16 else as_f32(x).astype(np.float16)), None
    if shape[-1] % Q8_BLOCK:
        return as_f32(x), None
    if isinstance(x, Q8Blocks):
        return x.data, gguf.GGMLQuantizationType.Q8_0
    return gguf.quants.quantize(as_f32(x), gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0


FILE_TYPE = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}


def gguf_name(name, n_layers):
    """The GGUF name of an HF GPT-2 tensor name, from gguf's own table."""
    import gguf

    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, n_layers)
    new = tmap.get_name("transformer." + name if not name.startswith("lm_head") else name, try_suffixes=(".weight", ".bias"))
    if new is None:
        raise ValueError(f"no GGUF name for GPT-2 tensor {name}")
    return new


def write(model, out, dtype="f32", name="msgen-export"):
    """Writes `model` (a Decoder) to `out` as GGUF in `dtype` (f32, f16, q8_0)."""
    import gguf

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype}")
    if model.tokenizer_json is None:
        raise ValueError("the model has no tokenizer.json; llama.cpp needs the vocabulary")
    w = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2])
    w.add_name(name)
    w.add_context_length(model.context)
    w.add_embedding_length(model.d_model)
    w.add_feed_forward_length(model.d_ff)
    w.add_block_count(model.n_layers)
    w.add_head_count(model.n_heads)
    w.add_layer_norm_eps(model.norm_eps)
    w.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPE[dtype]))

    tokens, types, merges = tokenizer_vocab(model.tokenizer_json, model.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    if model.eos_token_id is not None:
        w.add_bos_token_id(model.eos_token_id)
        w.add_eos_token_id(model.eos_token_id)
    w.add_add_bos_token(False)

    for hf_name in sorted(model.tensors, key=_tensor_order):
        data, raw_dtype = encode(model.tensors[hf_name], dtype)
        w.add_tensor(gguf_name(hf_name, model.n_layers), data, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _tensor_order(name):
    """Embeddings, then layers in order, then the final norm and head (as llama.cpp's converter)."""
    if name.startswith("h."):
        return (1, int(name.split(".")[1]), name)
    return (0 if name.startswith("w") else 2, 0, name)


def decode_bytes_per_token(gguf_path):
    """Bytes of weights each decoded token reads from a GGUF file: every tensor once, except
    the position table and, when an `output.weight` exists, the token embedding (one row
    each). What bounds decode speed by memory bandwidth (the KV cache comes on top)."""
    import gguf

    tensors = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(str(gguf_path)).tensors}
    skip = {"position_embd.weight"} | ({"token_embd.weight"} if "output.weight" in tensors else set())
    return sum(n for name, n in tensors.items() if name not in skip)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="HF GPT-2 checkpoint directory or msgen transformer-decoder .msz")
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--dtype", choices=DTYPES, default="f32")
    a = ap.parse_args(argv)
    try:
        model = load(a.source)
        if model.activation != "gelu_tanh":
            print(f"warning: the model uses the {model.activation} activation; llama.cpp's gpt2 runs the tanh GELU, "
                  "so its logits will differ slightly", file=sys.stderr)
        write(model, a.output, a.dtype, name=a.source.stem)
    except (ValueError, OSError, msz.MSZError) as e:
        sys.exit(f"gguf_export: {e}")
    print(f"wrote {a.output} ({a.output.stat().st_size:,} bytes, {a.dtype})")


if __name__ == "__main__":
    main()
