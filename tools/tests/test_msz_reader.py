"""The pure-Python .msz reader (msgen_tools.msz) against FORMAT.md, files msgen wrote, and bad input."""
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zstandard

from msgen_tools import gguf_export, gpt2_numpy, msz

ROOT = Path(__file__).resolve().parents[2]
BASELINE = ROOT / "models" / "baseline-kjv.msz"
PSALM = ROOT / "Tests" / "Fixtures" / "perplexity" / "psalm.txt"
GOLDEN = ROOT / "Tests" / "Fixtures" / "golden" / "transformer_untied_gelutanh"  # for its tokenizer


def msgen_binary():
    """$MSGEN, or a built msgen in this checkout (release, then debug); None if there is none."""
    for p in [os.environ.get("MSGEN"), ROOT / ".build" / "release" / "msgen", ROOT / ".build" / "debug" / "msgen"]:
        if p and Path(p).is_file() and os.access(p, os.X_OK):
            return Path(p)
    return None


# ---------------------------------------------------------------------------------------
# A hand-written .msz, laid out byte by byte as FORMAT.md says (independent of the reader)

def planes(raw, size, block=1 << 20):
    """FORMAT.md's byte planes, written out with plain loops over 1 MiB blocks."""
    out = bytearray()
    for start in range(0, len(raw), block):
        chunk = raw[start:start + block]
        for p in range(size):
            out += chunk[p::size]
    return bytes(out)


def frame(data):
    return zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True).compress(data)


def write_msz(path, tensors, architecture="transformer-decoder", config=None, header_patch=None, tail=b""):
    """tensors: [(name, dtype, shape, raw bytes, layout)]."""
    entries, data = [], b""
    for name, dtype, shape, raw, layout in tensors:
        size = msz.ELEMENT_SIZE[dtype]
        f = frame(planes(raw, size) if layout == "planes" else raw)
        entries.append(dict(name=name, dtype=dtype, shape=list(shape), offset=len(data), size=len(f), layout=layout))
        data += f
    header = dict(architecture=architecture, config=config or {}, tokenizer=None, provenance={}, tensors=entries)
    if header_patch:
        header_patch(header)
    h = frame(json.dumps(header).encode())
    Path(path).write_bytes(b"MSZF" + struct.pack("<IQ", 1, len(h)) + h + data + tail)


def q8_blocks(x):
    """Reference q8: per 32 values d = f16(max|x| / 127), q = round(x / d)."""
    blocks = x.reshape(-1, 32)
    d = (np.abs(blocks).max(1) / 127).astype(np.float16)
    q = np.round(blocks / np.where(d == 0, 1, d.astype(np.float32))[:, None]).astype(np.int8)
    raw = b"".join(di.tobytes() + qi.tobytes() for di, qi in zip(d, q))
    return raw, (d.astype(np.float32)[:, None] * q).reshape(x.shape)


@pytest.fixture
def handmade(tmp_path):
    rng = np.random.default_rng(0)
    big = rng.standard_normal((300, 1001)).astype(np.float32)  # 1.2 MB: two plane blocks, the last partial
    half = rng.standard_normal((7, 9)).astype(np.float16)
    bf = rng.standard_normal((5, 3)).astype(np.float32)
    bf_bits = (bf.view(np.uint32) >> 16).astype(np.uint16)  # truncation: any bf16 value is exact
    q_raw, q_vals = q8_blocks(rng.standard_normal((4, 64)).astype(np.float32))
    ids = np.arange(-3, 9, dtype=np.int64)
    path = tmp_path / "hand.msz"
    write_msz(path, [("big", "f32", big.shape, big.tobytes(), "planes"), ("half", "f16", half.shape, half.tobytes(), "planes"),
                     ("bf", "bf16", bf.shape, bf_bits.tobytes(), "planes"), ("q", "q8", (4, 64), q_raw, "plain"),
                     ("ids", "i64", ids.shape, ids.tobytes(), "plain")],
              config={"answer": 42})
    return path, dict(big=big, half=half, bf=(bf_bits.astype(np.uint32) << 16).view(np.float32), q=q_vals, ids=ids)


def test_reads_every_dtype_and_layout_exactly(handmade):
    path, expected = handmade
    f = msz.MSZFile(path)
    assert f.architecture == "transformer-decoder" and f.config == {"answer": 42}
    assert [t.name for t in f.tensors] == ["big", "half", "bf", "q", "ids"]
    for name, want in expected.items():
        got = f.array(name)
        assert got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert f.array("half").dtype == np.float16 and f.array("half", widen=True).dtype == np.float32
    assert f.info("q").raw_bytes == 8 * 34 and len(f.raw("q")) == 8 * 34


def test_planes_round_trip_across_block_boundaries():
    rng = np.random.default_rng(1)
    for n, size in [(5, 2), ((1 << 20) + 12, 4), (3 * (1 << 19) + 2, 2), (24, 8)]:
        raw = rng.integers(0, 256, n * size, dtype=np.uint8).tobytes()
        assert msz.shuffle_planes(raw, size) == planes(raw, size)
        assert msz.unshuffle_planes(planes(raw, size), size) == raw


def corrupt_cases(tmp_path):
    good = [("a", "f32", (2, 3), np.arange(6, dtype=np.float32).tobytes(), "planes"),
            ("b", "f32", (3,), np.ones(3, dtype=np.float32).tobytes(), "planes")]
    cases = {}

    def case(name, **kw):
        p = tmp_path / f"{name}.msz"
        write_msz(p, kw.pop("tensors", good), **kw)
        cases[name] = p
        return p

    def patch(key, value, i=0):
        return lambda h: h["tensors"][i].__setitem__(key, value)

    case("unknown_dtype", header_patch=patch("dtype", "f8"))
    case("unknown_layout", header_patch=patch("layout", "zigzag"))
    case("duplicate", header_patch=patch("name", "b"))
    case("outside", header_patch=patch("offset", 10_000))
    case("overlap", header_patch=patch("offset", 0, i=1))
    case("shape_vs_q8", tensors=[("q", "q8", (3, 10), b"\0" * 34, "plain")])
    case("trailing", tail=b"junk")
    case("size_mismatch", header_patch=patch("shape", [2, 4]))
    p = case("bad_checksum")
    data = bytearray(p.read_bytes())
    data[-6] ^= 0xFF  # inside the last frame's compressed data or checksum
    p.write_bytes(bytes(data))
    p = case("bad_magic")
    p.write_bytes(b"MSZX" + p.read_bytes()[4:])
    p = case("newer_version")
    p.write_bytes(p.read_bytes()[:4] + struct.pack("<I", 2) + p.read_bytes()[8:])
    p = case("truncated")
    p.write_bytes(p.read_bytes()[:12])
    p = case("huge_header")
    p.write_bytes(p.read_bytes()[:8] + struct.pack("<Q", 1 << 40) + p.read_bytes()[16:])
    return cases


EXPECTED_ERRORS = {
    "unknown_dtype": "unknown dtype 'f8'", "unknown_layout": "unknown layout", "duplicate": "appears twice",
    "outside": "outside the file", "overlap": "overlaps", "shape_vs_q8": "impossible shape", "trailing": "unexpected bytes",
    "size_mismatch": "declares 24 bytes, the header says 32", "bad_checksum": "tensor b", "bad_magic": "bad magic",
    "newer_version": "version 2", "truncated": "too short", "huge_header": "header length",
}


def test_bad_files_raise_one_clear_error(tmp_path):
    cases = corrupt_cases(tmp_path)
    assert set(cases) == set(EXPECTED_ERRORS)
    for name, path in cases.items():
        with pytest.raises(msz.MSZError, match=EXPECTED_ERRORS[name].replace("(", r"\(")):
            f = msz.MSZFile(path)
            for t in f.tensors:  # errors in a frame show when the tensor is read
                f.raw(t.name)


# ---------------------------------------------------------------------------------------
# Files msgen wrote

def expected_decoder_tensors(c):
    """DESIGN §4's tensor names and shapes for a transformer-decoder config, written out."""
    D, F, V = c["d_model"], c["d_ff"], c["vocab_size"]
    t = {"embed.weight": (V, D), "pos.weight": (c["max_positions"], D), "norm_f.weight": (D,), "norm_f.bias": (D,)}
    for i in range(c["n_layers"]):
        p = f"layers.{i}."
        for n in ("norm1", "norm2"):
            t[p + n + ".weight"], t[p + n + ".bias"] = (D,), (D,)
        for x in "qkvo":
            t[p + f"attn.{x}_proj.weight"], t[p + f"attn.{x}_proj.bias"] = (D, D), (D,)
        t[p + "mlp.fc1.weight"], t[p + "mlp.fc1.bias"] = (F, D), (F,)
        t[p + "mlp.fc2.weight"], t[p + "mlp.fc2.bias"] = (D, F), (D,)
    if not c.get("tie_embeddings", False):
        t["lm_head.weight"] = (V, D)
    return t


def test_bundled_baseline_header_and_tensors():
    f = msz.MSZFile(BASELINE)
    assert f.architecture == "transformer-decoder"
    assert {t.name: t.shape for t in f.tensors} == expected_decoder_tensors(f.config)
    assert all(t.dtype == "f32" and t.planes for t in f.tensors)
    tok = json.loads(f.tokenizer_json)
    assert len(tok["model"]["vocab"]) == f.config["vocab_size"]
    for i in range(f.config["n_layers"]):  # LayerNorm gains are trained from 1, never far from it
        gain = f.array(f"layers.{i}.norm1.weight")
        assert 0.2 < np.abs(gain).mean() < 5


def baseline_psalm_ids(m):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(m.tokenizer_json)
    lines = PSALM.read_text().splitlines(keepends=True)
    text = "".join(lines[:6])
    ids = tok.encode(text).ids
    assert len(ids) <= m.context
    return text, ids


def test_bundled_baseline_weights_make_a_kjv_language_model():
    """Read wrongly (plane order, transposes, q/k/v order), the weights would give perplexity
    in the thousands; read right, the KJV-trained baseline finds a psalm easy. Measured: ppl
    29.5 on these 6 verses (147 scored tokens), against 4,096 for a uniform guess."""
    m = gguf_export.from_msz(BASELINE)
    _, ids = baseline_psalm_ids(m)
    lp = gpt2_numpy.token_logprobs(gpt2_numpy.reference_logits(m, ids), ids)
    ppl = float(np.exp(-lp.mean()))
    assert 20 < ppl < 60, ppl


@pytest.mark.skipif(msgen_binary() is None, reason="no msgen binary (build it, or set MSGEN)")
def test_reference_on_read_weights_matches_msgen_perplexity(tmp_path):
    m = gguf_export.from_msz(BASELINE)
    text, ids = baseline_psalm_ids(m)
    (tmp_path / "psalm.txt").write_text(text)
    r = subprocess.run([str(msgen_binary()), "perplexity", str(tmp_path / "psalm.txt"), "--model", str(BASELINE),
                        "--context", str(len(ids)), "--json", "--per-token", "--threads", "1"],
                       check=True, capture_output=True, text=True)
    per = json.loads(r.stdout)["per_token"]
    assert [p["id"] for p in per] == ids[1:]
    lp = gpt2_numpy.token_logprobs(gpt2_numpy.reference_logits(m, ids), ids)
    np.testing.assert_allclose([p["logprob"] for p in per], lp, atol=5e-5)


def random_checkpoint(out):
    """A §4 transformer-decoder checkpoint whose rows are multiples of 32 (so q8 applies),
    random weights, and the golden fixtures' tokenizer."""
    from safetensors.numpy import save_file

    cfg = dict(architecture="transformer-decoder", vocab_size=320, d_model=64, n_layers=1, n_heads=2, d_ff=96,
               max_positions=8, eos_token_id=0, tie_embeddings=False, activation="gelu_tanh")
    rng = np.random.default_rng(3)
    weights = {n: (0.5 * rng.standard_normal(shape)).astype(np.float32) for n, shape in expected_decoder_tensors(cfg).items()}
    out.mkdir()
    save_file(weights, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(cfg))
    shutil.copyfile(GOLDEN / "tokenizer.json", out / "tokenizer.json")
    return weights


@pytest.mark.skipif(msgen_binary() is None, reason="no msgen binary (build it, or set MSGEN)")
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "q8"])
def test_reads_what_msgen_convert_wrote(tmp_path, dtype):
    """`msgen convert` of a checkpoint, read back: f32 bit for bit, f16 and bf16 as
    round-to-nearest-even of the f32 source, q8 matrices within half a step of their
    block's scale (vectors stay f32)."""
    source = random_checkpoint(tmp_path / "ckpt")
    out = tmp_path / f"model-{dtype}.msz"
    subprocess.run([str(msgen_binary()), "convert", str(tmp_path / "ckpt"), "-o", str(out), "--dtype", dtype],
                   check=True, capture_output=True)
    f = msz.MSZFile(out)
    assert {t.name for t in f.tensors} == set(source)
    for t in f.tensors:
        want = source[t.name]
        got = f.array(t.name, widen=True)
        assert t.dtype == (dtype if dtype != "q8" or len(t.shape) == 2 else "f32"), t.name
        if t.dtype == "f32":
            np.testing.assert_array_equal(got, want, err_msg=t.name)
        elif t.dtype == "f16":
            np.testing.assert_array_equal(got, want.astype(np.float16).astype(np.float32), err_msg=t.name)
        elif t.dtype == "bf16":
            bits = want.view(np.uint32).astype(np.uint64)
            rne = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint32) << 16
            np.testing.assert_array_equal(got, rne.view(np.float32), err_msg=t.name)
        else:
            blocks = want.reshape(-1, 32)
            step = np.abs(blocks).max(1, keepdims=True) / 127
            err = np.abs(got.reshape(-1, 32) - blocks)
            assert np.all(err <= 0.5 * step * 1.01), t.name
            assert err.max() > 0, t.name  # really quantised
