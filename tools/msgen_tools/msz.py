"""Read msgen's `.msz` model files from Python (Sources/MSFormat/FORMAT.md).

    from msgen_tools import msz
    f = msz.MSZFile("models/baseline-kjv.msz")
    f.architecture, f.config, f.tokenizer_json, [t.name for t in f.tensors]
    w = f.array("embed.weight")          # numpy: float32 / float16 / float32 (from bf16, q8)
    raw = f.raw("layers.0.mlp.fc1.weight")  # the tensor's raw bytes (q8: 34-byte blocks)

The file is a 16-byte prelude (magic `MSZF`, u32 version, u64 header length H), one zstd
frame of header JSON, then one zstd frame per tensor. Multi-byte dtypes are stored as
byte planes in blocks of 1 MiB. Like the Swift reader, this one checks every size and
offset before trusting it and raises `MSZError` with one clear sentence otherwise.
"""
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zstandard

MAGIC = b"MSZF"
VERSION = 1
PRELUDE_BYTES = 16
PLANE_BLOCK_BYTES = 1 << 20
MAX_HEADER_BYTES = 1 << 30
Q8_BLOCK = 32
Q8_BLOCK_BYTES = 2 + Q8_BLOCK  # f16 scale d, then 32 int8 q; value = d*q (= ggml's block_q8_0)

# dtype -> bytes per element (None: a block type)
ELEMENT_SIZE = {"f32": 4, "f16": 2, "bf16": 2, "i32": 4, "i64": 8, "q8": None}
NUMPY_DTYPE = {"f32": np.float32, "f16": np.float16, "i32": np.int32, "i64": np.int64}


class MSZError(ValueError):
    """A file that is not a valid .msz; the message says what is wrong."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple
    offset: int  # of its frame, from the start of the data section
    stored_bytes: int
    raw_bytes: int
    planes: bool

    @property
    def count(self):
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


def raw_byte_count(dtype, count):
    """Bytes that `count` elements of `dtype` take, or None if impossible (q8 partial block)."""
    size = ELEMENT_SIZE[dtype]
    if size is not None:
        return count * size
    return None if count % Q8_BLOCK else count // Q8_BLOCK * Q8_BLOCK_BYTES


def unshuffle_planes(buf, element_size):
    """Undoes the byte-plane layout: each 1 MiB block holds byte 0 of every element, then byte 1, ..."""
    src = np.frombuffer(buf, dtype=np.uint8)
    out = np.empty_like(src)
    for start in range(0, len(src), PLANE_BLOCK_BYTES):
        block = src[start:start + PLANE_BLOCK_BYTES]
        n = len(block) // element_size
        out[start:start + len(block)] = block.reshape(element_size, n).T.reshape(-1)
    return out.tobytes()


def shuffle_planes(buf, element_size):
    """The inverse of `unshuffle_planes` (for tests and writers)."""
    src = np.frombuffer(buf, dtype=np.uint8)
    out = np.empty_like(src)
    for start in range(0, len(src), PLANE_BLOCK_BYTES):
        block = src[start:start + PLANE_BLOCK_BYTES]
        n = len(block) // element_size
        out[start:start + len(block)] = block.reshape(n, element_size).T.reshape(-1)
    return out.tobytes()


def dequantize_q8(raw, shape):
    """q8 blocks -> float32 array of `shape`."""
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, Q8_BLOCK_BYTES)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    q = blocks[:, 2:].view(np.int8).astype(np.float32)
    return (d * q).reshape(shape)


def bf16_to_f32(raw, shape):
    bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
    return bits.view(np.float32).reshape(shape)


def _decompress_frame(frame, expected_size, what):
    """One whole zstd frame that declares exactly `expected_size` bytes and passes its checksum."""
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as e:
        raise MSZError(f"{what} is not a zstd frame ({e})") from None
    if expected_size is not None and params.content_size != expected_size:
        raise MSZError(f"{what} declares {params.content_size} bytes, the header says {expected_size}")
    if not params.has_checksum:
        raise MSZError(f"{what} has no content checksum")
    dobj = zstandard.ZstdDecompressor().decompressobj()
    try:
        out = dobj.decompress(frame)
    except zstandard.ZstdError as e:
        raise MSZError(f"{what} is corrupt ({e})") from None
    if not dobj.eof or dobj.unused_data:
        raise MSZError(f"{what} is not exactly one zstd frame")
    if expected_size is not None and len(out) != expected_size:
        raise MSZError(f"{what} decompressed to {len(out)} bytes, expected {expected_size}")
    return out


class MSZFile:
    """An opened .msz: header parsed and validated; tensors are read on demand."""

    def __init__(self, path):
        self.path = Path(path)
        self._data = self.path.read_bytes()
        name = self.path.name
        if len(self._data) < PRELUDE_BYTES:
            raise MSZError(f"{name} is not an msgen model: {len(self._data)} bytes is too short (truncated?)")
        magic, version, header_size = struct.unpack_from("<4sIQ", self._data, 0)
        if magic != MAGIC:
            raise MSZError(f"{name} is not an msgen model file (bad magic)")
        if not 1 <= version <= VERSION:
            raise MSZError(f"{name} uses .msz format version {version}; this reader reads version {VERSION}")
        if header_size > len(self._data) - PRELUDE_BYTES or header_size > MAX_HEADER_BYTES:
            raise MSZError(f"{name} is truncated or corrupt: header length {header_size} is larger than the file")
        self.data_start = PRELUDE_BYTES + header_size
        header_frame = self._data[PRELUDE_BYTES:self.data_start]
        try:
            header = json.loads(_decompress_frame(header_frame, None, f"the header of {name}"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise MSZError(f"{name} has a corrupt header: not valid JSON") from None
        try:
            self.architecture = header["architecture"]
            self.config = header["config"]
            self.tokenizer_json = header.get("tokenizer")
            self.provenance = header.get("provenance", {})
            entries = header["tensors"]
        except (KeyError, TypeError) as e:
            raise MSZError(f"{name} has a corrupt header: missing key {e}") from None
        self.tensors = self._validate(entries, len(self._data) - self.data_start, name)
        self._by_name = {t.name: t for t in self.tensors}

    @staticmethod
    def _validate(entries, data_bytes, name):
        infos, seen = [], set()
        for e in entries:
            try:
                tname, dtype, shape = e["name"], e["dtype"], tuple(e["shape"])
                offset, size, layout = e["offset"], e["size"], e["layout"]
            except (KeyError, TypeError) as err:
                raise MSZError(f"{name} has a corrupt header: a tensor entry lacks {err}") from None
            if not tname or tname in seen:
                raise MSZError(f"{name} has a corrupt header: tensor name {tname!r} is empty or appears twice")
            seen.add(tname)
            if dtype not in ELEMENT_SIZE:
                raise MSZError(f"{name}: tensor {tname} has unknown dtype '{dtype}'")
            if not all(isinstance(d, int) and d >= 0 for d in shape):
                raise MSZError(f"{name}: tensor {tname} has an impossible shape {list(shape)}")
            count = int(np.prod(shape, dtype=object)) if shape else 1
            raw = raw_byte_count(dtype, count)
            if raw is None:
                raise MSZError(f"{name}: tensor {tname} has an impossible shape {list(shape)} for {dtype}")
            if layout not in ("planes", "plain"):
                raise MSZError(f"{name}: tensor {tname} has unknown layout '{layout}'")
            if not (isinstance(offset, int) and isinstance(size, int) and offset >= 0 and size > 0
                    and offset + size <= data_bytes):
                raise MSZError(f"{name} is truncated or corrupt: tensor {tname} lies outside the file")
            infos.append(TensorInfo(tname, dtype, shape, offset, size, raw, layout == "planes"))
        end = 0
        for t in sorted(infos, key=lambda t: t.offset):
            if t.offset < end:
                raise MSZError(f"{name} has a corrupt header: tensor {t.name} overlaps another")
            end = t.offset + t.stored_bytes
        if end != data_bytes:
            raise MSZError(f"{name} is corrupt: {data_bytes - end} unexpected bytes after the last tensor")
        return infos

    def info(self, name):
        try:
            return self._by_name[name]
        except KeyError:
            raise MSZError(f"{self.path.name} has no tensor named {name}") from None

    def raw(self, name):
        """The tensor's raw bytes (row-major; q8 as 34-byte blocks), checksum verified."""
        t = self.info(name)
        start = self.data_start + t.offset
        out = _decompress_frame(self._data[start:start + t.stored_bytes], t.raw_bytes, f"tensor {t.name} in {self.path.name}")
        size = ELEMENT_SIZE[t.dtype]
        if t.planes and size and size > 1:
            out = unshuffle_planes(out, size)
        return out

    def array(self, name, widen=False):
        """The tensor as numpy: f32/f16/i32/i64 in their own dtype (f16 -> float32 with
        widen=True); bf16 and q8 are widened to float32."""
        t = self.info(name)
        raw = self.raw(name)
        if t.dtype == "q8":
            return dequantize_q8(raw, t.shape)
        if t.dtype == "bf16":
            return bf16_to_f32(raw, t.shape)
        a = np.frombuffer(raw, dtype=NUMPY_DTYPE[t.dtype]).reshape(t.shape)
        return a.astype(np.float32) if widen and t.dtype == "f16" else a
