"""GGUF export (msgen_tools.gguf_export) read back with gguf's own reader. Needs the `gguf`
package (the `bench` extra); skipped without it, so CI never needs llama.cpp."""
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from msgen_tools import gguf_export, msz

gguf = pytest.importorskip("gguf")

ROOT = Path(__file__).resolve().parents[2]
BASELINE = ROOT / "models" / "baseline-kjv.msz"
HF_GPT2 = ROOT / "Tests" / "Fixtures" / "gpt2"


def read(path):
    r = gguf.GGUFReader(str(path))
    fields = {}
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        v = f.contents()
        fields[name] = v
    return fields, {t.name: t for t in r.tensors}


def array(t):
    """A GGUF tensor as numpy [out, in] (gguf lists ggml's dims innermost first)."""
    shape = tuple(reversed([int(d) for d in t.shape]))
    if t.tensor_type == gguf.GGMLQuantizationType.Q8_0:
        return gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
    return np.asarray(t.data).reshape(shape)


def gguf_names(n_layers, tied):
    names = {"token_embd.weight", "position_embd.weight", "output_norm.weight", "output_norm.bias"}
    for i in range(n_layers):
        for t in ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down"):
            names |= {f"blk.{i}.{t}.weight", f"blk.{i}.{t}.bias"}
    return names if tied else names | {"output.weight"}


@pytest.fixture(scope="module")
def baseline_f32(tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "baseline-f32.gguf"
    gguf_export.write(gguf_export.from_msz(BASELINE), out, "f32")
    return out


def test_msz_export_metadata_tokenizer_and_names(baseline_f32):
    f = msz.MSZFile(BASELINE)
    c = f.config
    fields, tensors = read(baseline_f32)
    assert fields["general.architecture"] == "gpt2"
    assert fields["gpt2.context_length"] == c["max_positions"]
    assert fields["gpt2.embedding_length"] == c["d_model"]
    assert fields["gpt2.feed_forward_length"] == c["d_ff"]
    assert fields["gpt2.block_count"] == c["n_layers"]
    assert fields["gpt2.attention.head_count"] == c["n_heads"]
    assert fields["gpt2.attention.layer_norm_epsilon"] == pytest.approx(c["norm_eps"])
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.eos_token_id"] == c["eos_token_id"]
    assert fields["tokenizer.ggml.add_bos_token"] is False
    tok = json.loads(f.tokenizer_json)
    by_id = sorted(tok["model"]["vocab"], key=tok["model"]["vocab"].get)
    assert fields["tokenizer.ggml.tokens"] == by_id
    assert len(fields["tokenizer.ggml.merges"]) == len(tok["model"]["merges"])
    types = fields["tokenizer.ggml.token_type"]
    assert types[c["eos_token_id"]] == gguf.TokenType.CONTROL and types.count(gguf.TokenType.NORMAL) == len(by_id) - 1
    assert set(tensors) == gguf_names(c["n_layers"], tied=True)  # tied: no output.weight


def test_msz_export_f32_weights_exact(baseline_f32):
    f = msz.MSZFile(BASELINE)
    _, tensors = read(baseline_f32)
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in tensors.values())
    qkv = np.concatenate([f.array(f"layers.1.attn.{x}_proj.weight") for x in "qkv"])
    np.testing.assert_array_equal(array(tensors["blk.1.attn_qkv.weight"]), qkv)
    np.testing.assert_array_equal(array(tensors["blk.1.attn_qkv.bias"]),
                                  np.concatenate([f.array(f"layers.1.attn.{x}_proj.bias") for x in "qkv"]))
    for ours, theirs in [("embed.weight", "token_embd.weight"), ("pos.weight", "position_embd.weight"),
                         ("layers.3.mlp.fc1.weight", "blk.3.ffn_up.weight"), ("layers.3.mlp.fc2.weight", "blk.3.ffn_down.weight"),
                         ("layers.0.attn.o_proj.weight", "blk.0.attn_output.weight"), ("layers.2.norm2.bias", "blk.2.ffn_norm.bias"),
                         ("norm_f.weight", "output_norm.weight")]:
        np.testing.assert_array_equal(array(tensors[theirs]), f.array(ours), err_msg=theirs)


def test_f16_and_q8_exports(tmp_path):
    m = gguf_export.from_msz(BASELINE)
    gguf_export.write(m, tmp_path / "f16.gguf", "f16")
    gguf_export.write(m, tmp_path / "q8.gguf", "q8_0")
    _, f16 = read(tmp_path / "f16.gguf")
    _, q8 = read(tmp_path / "q8.gguf")
    up = m.tensors["h.2.mlp.c_fc.weight"]
    assert f16["blk.2.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    np.testing.assert_array_equal(array(f16["blk.2.ffn_up.weight"]), up.astype(np.float16))
    for name in ("blk.2.ffn_up.bias", "output_norm.weight"):  # vectors stay f32
        assert f16[name].tensor_type == q8[name].tensor_type == gguf.GGMLQuantizationType.F32
    t = q8["blk.2.ffn_up.weight"]
    assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
    got, blocks = array(t).reshape(-1, 32), up.reshape(-1, 32)
    # ggml picks q with the unrounded scale max|x|/127, then stores the scale as f16, which
    # can move the largest q·d by up to 127 · 2^-11 steps: within 0.5 + 0.0625 steps in all.
    step = np.abs(blocks).max(1, keepdims=True) / 127
    assert np.all(np.abs(got - blocks) <= 0.5625 * step)
    assert np.abs(got - blocks).max() > 0  # really quantised
    assert int(t.n_bytes) == up.size // 32 * 34
    matrices = {n for n, x in q8.items() if len(x.shape) == 2}  # every row here is whole blocks
    assert {n for n, x in q8.items() if x.tensor_type == gguf.GGMLQuantizationType.Q8_0} == matrices


def test_q8_blocks_are_copied_byte_for_byte(tmp_path):
    """A q8 tensor from an .msz is ggml's block_q8_0: written as it is, not re-quantised."""
    m = gguf_export.from_msz(BASELINE)
    w = m.tensors["h.0.mlp.c_fc.weight"]
    blocks = gguf.quants.quantize(w * 1.7, gguf.GGMLQuantizationType.Q8_0)  # any valid blocks
    m.tensors["h.0.mlp.c_fc.weight"] = gguf_export.Q8Blocks(blocks, w.shape)
    gguf_export.write(m, tmp_path / "q8.gguf", "q8_0")
    _, t = read(tmp_path / "q8.gguf")
    np.testing.assert_array_equal(np.asarray(t["blk.0.ffn_up.weight"].data), blocks)
    gguf_export.write(m, tmp_path / "f32.gguf", "f32")  # and widened exactly for f32
    _, t = read(tmp_path / "f32.gguf")
    np.testing.assert_array_equal(array(t["blk.0.ffn_up.weight"]), gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q8_0))


def test_hf_gpt2_directory_export(tmp_path):
    gguf_export.write(gguf_export.from_hf_dir(HF_GPT2), tmp_path / "gpt2.gguf", "f32")
    fields, tensors = read(tmp_path / "gpt2.gguf")
    cfg = json.loads((HF_GPT2 / "config.json").read_text())
    src = {k.removeprefix("transformer."): v for k, v in load_file(str(HF_GPT2 / "model.safetensors")).items()}
    assert set(tensors) == gguf_names(cfg["n_layer"], tied=True)
    assert fields["gpt2.feed_forward_length"] == 4 * cfg["n_embd"]  # n_inner null
    np.testing.assert_array_equal(array(tensors["blk.1.attn_qkv.weight"]), src["h.1.attn.c_attn.weight"].T)  # Conv1D
    np.testing.assert_array_equal(array(tensors["blk.1.ffn_down.weight"]), src["h.1.mlp.c_proj.weight"].T)
    np.testing.assert_array_equal(array(tensors["token_embd.weight"]), src["wte.weight"])


def test_untied_model_gets_output_weight_and_padded_vocab(tmp_path):
    m = gguf_export.from_msz(BASELINE)
    m.tensors["lm_head.weight"] = m.tensors["wte.weight"] * 2
    m.vocab_size += 5  # more rows than tokens: llama.cpp wants a token per row
    for k in ("wte.weight", "lm_head.weight"):
        m.tensors[k] = np.concatenate([m.tensors[k], np.zeros((5, m.d_model), np.float32)])
    gguf_export.write(m, tmp_path / "untied.gguf", "f32")
    fields, tensors = read(tmp_path / "untied.gguf")
    assert "output.weight" in tensors
    assert len(fields["tokenizer.ggml.tokens"]) == m.vocab_size
    assert fields["tokenizer.ggml.tokens"][-1] == f"[PAD{m.vocab_size - 1}]"
    assert fields["tokenizer.ggml.token_type"][-1] == gguf.TokenType.UNUSED


def test_decode_bytes_per_token(baseline_f32, tmp_path):
    c = msz.MSZFile(BASELINE).config
    D, F, V, L = c["d_model"], c["d_ff"], c["vocab_size"], c["n_layers"]
    per_layer = 4 * D * D + 2 * D * F + (3 * D + D + F + D) + 4 * D  # matrices, biases, two norms
    assert gguf_export.decode_bytes_per_token(baseline_f32) == 4 * (V * D + L * per_layer + 2 * D)


def test_bad_sources_are_refused(tmp_path):
    with pytest.raises(ValueError, match="cst-decoder"):
        gguf_export.from_msz(ROOT / "models" / "cst-kjv.msz")
    m = gguf_export.from_msz(BASELINE)
    with pytest.raises(ValueError, match="dtype"):
        gguf_export.write(m, tmp_path / "x.gguf", "q4_0")
    m.tokenizer_json = None
    with pytest.raises(ValueError, match="tokenizer"):
        gguf_export.write(m, tmp_path / "x.gguf", "f32")
