"""Classifier training: smoke runs of every model, exact resume, a loadable §4 export."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import enc_cfg, rand_model
from msgen_tools import fortunes_dataset as fd
from msgen_tools import train_classifier as tc
from msgen_tools.export import load_checkpoint
from msgen_tools.models import truncate_for_encoder

TOPICS = {"fruit": ["apple", "pear", "plum", "fig"], "tools": ["hammer", "saw", "drill", "nail"],
          "weather": ["rain", "snow", "wind", "sun"]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    g = torch.Generator().manual_seed(0)
    rows = []
    for label, words in TOPICS.items():
        for i in range(30):
            n = 2 + int(torch.randint(0, 12, (1,), generator=g))
            picks = torch.randint(0, 4, (n,), generator=g).tolist()
            rows.append({"text": "the " + " and ".join(words[p] for p in picks) + f" {i}", "label": label})
    for s, part in (("train", rows[0::3] + rows[1::3]), ("valid", rows[2::6]), ("test", rows[5::6])):
        fd.write_jsonl(root / f"{s}.jsonl", part)
    fd.train_tokenizer([r["text"] for r in rows], 300).save(str(root / "tokenizer.json"))
    return root


def train_args(data, run_dir, *extra):
    return ["train", "--run-dir", str(run_dir), "--data", str(data), "--tokenizer", str(data / "tokenizer.json"),
            "--d-model", "16", "--n-heads", "4", "--n-layers", "2", "--d-ff", "12", "--scales", "1,3,N/4",
            "--max-length", "12", "--batch-size", "8", "--warmup", "2", "--threads", "1", "--quiet",
            "--word-dropout", "0.1", "--head-dropout", "0.1", "--label-smoothing", "0.1", *extra]


def test_smoke_run_exports_a_loadable_checkpoint(data, tmp_path):
    res = tc.main(train_args(data, tmp_path / "ms", "--epochs", "1"))
    assert res["epochs_run"] == 1 and 0.0 <= res["test_acc"] <= 1.0
    final = tmp_path / "ms" / "final"
    cfg_json = json.loads((final / "config.json").read_text())
    assert cfg_json["architecture"] == "ms-trans-encoder"
    assert cfg_json["labels"] == sorted(TOPICS) and cfg_json["cls_token_id"] == fd.CLS_ID
    assert cfg_json["max_length"] == 12 and cfg_json["d_ff"] == 12
    assert cfg_json["layer_scales"] == [[1, 1, 3, "N/4"], [1, 1, 3, "N/4"]]  # alpha rule, alpha 0.5
    with safe_open(str(final / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    per_layer = [f"attn.{p}_proj.{w}" for p in "qkvo" for w in ("weight", "bias")] + ["norm.weight", "norm.bias"]
    assert names == ({"embed.weight"} | {f"layers.{i}.{p}" for i in range(2) for p in per_layer}
                     | {f"classifier.fc{i}.{w}" for i in (1, 2) for w in ("weight", "bias")})

    model, cfg = load_checkpoint(final)
    tok = fd.tk.load(final / "tokenizer.json")
    ids = truncate_for_encoder(tok.encode("the apple and pear and plum and fig and apple and pear").ids, cfg)
    probs = torch.softmax(model(torch.tensor([ids])), -1)
    assert probs.shape == (1, 3) and abs(probs.sum().item() - 1) < 1e-5
    assert (tmp_path / "ms" / "result.json").exists() and not (tmp_path / "ms" / "ckpt.pt").exists()


def test_resume_is_exact(data, tmp_path):
    tc.main(train_args(data, tmp_path / "a", "--epochs", "2", "--flatten-prob", "0.5"))
    assert tc.main(train_args(data, tmp_path / "b", "--epochs", "2", "--flatten-prob", "0.5", "--stop-at", "1")) is None
    tc.main(["train", "--run-dir", str(tmp_path / "b"), "--resume"])
    a = load_checkpoint(tmp_path / "a" / "final")[0].state_dict()
    b = load_checkpoint(tmp_path / "b" / "final")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_baselines_and_report(data, tmp_path):
    runs = tmp_path / "runs"
    tc.main(train_args(data, runs / "single-s1", "--arch", "single", "--epochs", "1"))
    tc.main(train_args(data, runs / "tr-s1", "--arch", "transformer", "--epochs", "1", "--ffn", "32"))
    tc.main(train_args(data, runs / "ms-s1", "--epochs", "1", "--seed", "1"))
    tc.main(train_args(data, runs / "ms-s2", "--epochs", "1", "--seed", "2"))
    tc.main(["bow", "--run-dir", str(runs / "bow"), "--data", str(data), "--C", "1", "10"])
    out = tc.main(["report", "--runs", str(runs), "--data", str(data)])
    assert set(out["summary"]) == {"single", "transformer", "mstrans", "bow-lr"}
    assert out["summary"]["mstrans"]["seeds"] == [1, 2]
    assert json.loads((runs / "single-s1" / "final" / "config.json").read_text())["layer_scales"] == [[3] * 4] * 2
    assert (runs / "results.json").exists() and load_checkpoint(runs / "final")[1].architecture == "ms-trans-encoder"


def test_pretrain_then_finetune(data, tmp_path):
    texts = [r["text"] for s in ("train", "valid", "test") for r in fd.read_jsonl(data / f"{s}.jsonl")]
    (tmp_path / "unlabeled.txt").write_text("\n%\n".join(texts + ["the sun and the rain and the snow"]) + "\n")
    kept = tc.unlabeled_texts(data, tmp_path / "unlabeled.txt")
    held = {r["text"] for s in ("valid", "test") for r in fd.read_jsonl(data / f"{s}.jsonl")}
    assert len(kept) == len(texts) + 1 - len(held) and not held & set(kept)  # never reads held-out text

    pre = tmp_path / "pre"
    args = train_args(data, pre, "--epochs", "2", "--stop-at", "1", "--unlabeled", str(tmp_path / "unlabeled.txt"))
    assert tc.main(["pretrain", *args[1:]]) is None
    tc.main(["pretrain", "--run-dir", str(pre), "--resume"])
    enc = load_file(str(pre / "encoder.safetensors"))
    assert "embed.weight" in enc and not any(k.startswith("classifier.") for k in enc)

    tc.main(train_args(data, tmp_path / "ft", "--epochs", "1", "--init-from", str(pre), "--lr", "0"))
    ft = load_checkpoint(tmp_path / "ft" / "final")[0].state_dict()
    assert all(torch.equal(ft[k], enc[k]) for k in enc)  # lr 0: the encoder is exactly the pretrained one


def test_ppmi_embeddings_frozen(data, tmp_path):
    texts = [r["text"] for r in fd.read_jsonl(data / "train.jsonl")]
    (tmp_path / "unlabeled.txt").write_text("\n%\n".join(texts) + "\n")
    out = tmp_path / "embed.safetensors"
    E = tc.main(["embed", "--data", str(data), "--tokenizer", str(data / "tokenizer.json"), "--unlabeled",
                 str(tmp_path / "unlabeled.txt"), "--dim", "16", "--out", str(out)])
    assert E.shape == (300, 16) and torch.isfinite(E).all()
    tc.main(train_args(data, tmp_path / "ft", "--epochs", "1", "--init-embed", str(out), "--freeze-embed"))
    model = load_checkpoint(tmp_path / "ft" / "final")[0]
    assert torch.equal(model.embed.weight, load_file(str(out))["embed.weight"])


def test_fast_attention_matches_the_reference():
    model = rand_model(dtype=torch.float32, **enc_cfg())
    fast = tc.use_fast_attention(rand_model(dtype=torch.float32, **enc_cfg()))
    fast.load_state_dict(model.state_dict())
    ids = torch.randint(0, 36, (3, 20))
    lens = torch.tensor([20, 7, 1])
    assert (model(ids, lens) - fast(ids, lens)).abs().max().item() < 1e-5


def test_regularisers_are_identity_in_eval():
    model = rand_model(dtype=torch.float32, **enc_cfg())
    noisy = tc.add_regularisers(rand_model(dtype=torch.float32, **enc_cfg()), 0.3, 0.3, 0.3)
    noisy.load_state_dict(model.state_dict())
    ids = torch.randint(0, 36, (2, 9))
    assert torch.equal(model(ids), noisy.eval()(ids))
    assert not torch.equal(model(ids), noisy.train()(ids))


def test_alpha_table_is_the_rule_as_written():
    table = tc.alpha_table(0.5, tc.PAPER_SCALES, 10, 3)
    assert table.splitlines()[2].split() == ["1", "4", "3", "1", "1", "1"]
    assert table.splitlines()[3].split() == ["2", "3", "2", "2", "2", "1"]
