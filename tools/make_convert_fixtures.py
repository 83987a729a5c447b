"""Writes the converter's hostile-input and extra-format fixtures (Tests/Fixtures/format/).

Every file is made by the real libraries (torch.save, safetensors, tokenizers) or, for
the crafted archives, by Python's own pickle and zipfile writing exactly the layout
torch.save uses, so the Swift readers are tested against what they meet in the wild:

  legacy.pt            torch.save(..., _use_new_zipfile_serialization=False): not a zip
  self_ref.pt          d = dict(sd); d['self'] = d; torch.save(d, f)
  huge_numel.pt        a storage that declares 2^61 elements (16 bytes stored)
  huge_offset.pt       a tensor whose storage offset is 2^63 - 2
  huge_stride.pt       a tensor whose strides reach past 2^63 when added
  huge_broadcast.pt    a stride-0 view of 2^40 elements over a 4-element storage
  zip_claim.pt         a 16-byte stored entry whose zip headers claim 1 GiB
  shared_dicts.pt      40 levels of d = {"x": d, "y": d}: tiny, but 2^40 paths to walk
  deep_dicts.pt        a tensor nested 150 dicts deep
  tiny-cst-sharded/    tiny-cst split as save_pretrained(max_shard_size=...) writes it
  gpt2-vocab/          vocab.json + merges.txt (as GPT2Tokenizer.save_vocabulary writes
                       them) of the gpt2 fixture's tokenizer; hf_tokenizer.json, what HF
                       tokenizers makes of those two files; and cases.json: texts with the
                       ids it gives for them

    .venv/bin/python tools/make_convert_fixtures.py
"""
import collections
import io
import json
import pathlib
import pickle
import shutil
import zipfile

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "Tests" / "Fixtures"
OUT = FIXTURES / "format"


def small_state():
    g = torch.Generator().manual_seed(3)
    return collections.OrderedDict([("w", torch.randn(2, 3, generator=g)), ("b", torch.randn(3, generator=g))])


# MARK: crafted torch zip archives


class FakeStorage:
    """Stands for a storage in the pickle: torch.save writes it as a persistent id."""

    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class FakeTensor:
    """Pickles as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return None


def crafted_zip(path, numel, offset, size, stride, stored_floats=4):
    """A torch zip holding one float tensor with the given (possibly absurd) geometry."""
    buf = io.BytesIO()
    TorchPickler(buf, protocol=2).dump(collections.OrderedDict([("w", FakeTensor(FakeStorage("0", numel), offset, size, stride))]))
    name = path.stem
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{name}/data.pkl", buf.getvalue())
        z.writestr(f"{name}/byteorder", "little")
        z.writestr(f"{name}/data/0", torch.arange(stored_floats, dtype=torch.float32).numpy().tobytes())
        z.writestr(f"{name}/version", "3\n")


def claim_size(path, entry, size):
    """Rewrites the uncompressed size that the local and central zip headers give `entry`."""
    data = bytearray(path.read_bytes())
    name = entry.encode()
    for sig, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        at = data.find(sig)
        while at >= 0 and data[at + name_at:at + name_at + len(name)] != name:
            at = data.find(sig, at + 1)
        assert at >= 0, entry
        data[at + size_at:at + size_at + 4] = size.to_bytes(4, "little")
    path.write_bytes(bytes(data))


# MARK: sharded safetensors


def shard(src: pathlib.Path, dst: pathlib.Path, shards: int):
    """What transformers' save_pretrained(max_shard_size=...) writes: shards named
    model-0000i-of-0000n.safetensors with {"format": "pt"} metadata, and an index."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for f in ("config.json", "tokenizer.json"):
        shutil.copyfile(src / f, dst / f)
    tensors = load_file(str(src / "model.safetensors"))
    names = sorted(tensors)
    weight_map, total = {}, 0
    for i in range(shards):
        part = names[i::shards]
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, str(dst / file), metadata={"format": "pt"})
        for n in part:
            weight_map[n] = file
            total += tensors[n].numel() * tensors[n].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


# MARK: GPT-2 vocab.json + merges.txt

CASES = [
    "In the beginning God created the heaven and the earth.",
    "Hello world",
    " leading space, and trailing  ",
    "don't we'll they're I've it's",
    "numbers 1234567 and 3.14159",
    "tabs\tand\nnewlines\n\n  indented",
    "unicode: café naïve 日本語 😀 ☃",
    "<|endoftext|>after the end<|endoftext|>",
    "   ",
    "",
    "MiXeD CaSe WORDS",
    "a" * 40,
]


def gpt2_vocab(dst: pathlib.Path):
    src = json.loads((FIXTURES / "gpt2" / "tokenizer.json").read_text())
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    vocab = src["model"]["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in src["model"]["merges"]]
    # The layout GPT2Tokenizer.save_vocabulary uses.
    (dst / "vocab.json").write_text(json.dumps(vocab, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    (dst / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")

    # HF tokenizers loading those two files, set up as transformers' GPT2Converter does.
    tok = Tokenizer(models.BPE.from_file(str(dst / "vocab.json"), str(dst / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens(["<|endoftext|>"])
    (dst / "hf_tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
    cases = [{"text": t, "ids": tok.encode(t).ids} for t in CASES]
    (dst / "cases.json").write_text(json.dumps(cases, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def main():
    sd = small_state()
    torch.save(sd, str(OUT / "legacy.pt"), _use_new_zipfile_serialization=False)
    d = dict(sd)
    d["self"] = d
    torch.save(d, str(OUT / "self_ref.pt"))
    crafted_zip(OUT / "huge_numel.pt", numel=2**61, offset=0, size=[4], stride=[1])
    crafted_zip(OUT / "huge_offset.pt", numel=4, offset=2**63 - 2, size=[4], stride=[1])
    crafted_zip(OUT / "huge_stride.pt", numel=4, offset=0, size=[2, 2], stride=[2**62, 2**62])
    crafted_zip(OUT / "huge_broadcast.pt", numel=4, offset=0, size=[2**40], stride=[0])
    crafted_zip(OUT / "zip_claim.pt", numel=2**28, offset=0, size=[4], stride=[1])
    claim_size(OUT / "zip_claim.pt", "zip_claim/data/0", 2**30)
    shared = {"w": sd["w"]}
    for _ in range(40):
        shared = {"x": shared, "y": shared}
    torch.save(shared, str(OUT / "shared_dicts.pt"))
    deep = {"w": sd["w"]}
    for _ in range(150):
        deep = {"n": deep}
    torch.save(deep, str(OUT / "deep_dicts.pt"))
    shard(OUT / "tiny-cst", OUT / "tiny-cst-sharded", shards=2)
    gpt2_vocab(OUT / "gpt2-vocab")


if __name__ == "__main__":
    main()
