"""Prefix mechanism, batched k-prefix extraction, PrefixTuning, registry and extract CLI (Huang et al. 2023)."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from safetensors import safe_open
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from transformers import DynamicCache

from core.backbones import build_encoder, load_tokenizer, model_fingerprint
from core.errors import ConfigError
from core.heads import pool
from lightning_modules.prefix.module import PrefixTuning
from lightning_modules.prefix.networks import Prefix, PrefixEncoder, PrefixShape, encode, extract, tokenize
from lightning_modules.prefix.registry import check_compatible, list_prefixes, load_prefix, save_prefix
from pipelines.prefix_extract import main as extract_main

TEXTS = ["the cat sat on the mat", "a dog", "red cars drive fast on the long open road today", "sun", "blue sky"]
WORDS = "the a cat dog sat ran on under big small red blue house tree car road sky sun moon fish bird green".split()


@pytest.fixture(scope="module")
def encoder():
    return build_encoder("tiny-bert", seed=0).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny-bert")


def make_prefixes(encoder, lengths=(3, 5, 8), seed=1) -> list[Prefix]:
    torch.manual_seed(seed)
    shape = PrefixShape.of(encoder)
    return [PrefixEncoder(shape, n, reparameterize=i % 2 == 0).materialize(f"p{i}") for i, n in enumerate(lengths)]


# ---------------------------------------------------------------- mechanism


def test_prefix_changes_output_and_only_prefix_gets_gradients(tokenizer):
    encoder = build_encoder("tiny-bert", seed=0).eval().requires_grad_(False)
    enc = tokenize(tokenizer, TEXTS, 512)[0]
    prefix = PrefixEncoder(PrefixShape.of(encoder), length=4)
    keys, values = prefix()
    assert keys.shape == (2, 4, 4, 16)  # (L, H, P, D) of tiny-bert
    hidden = encode(encoder, enc["input_ids"], enc["attention_mask"], keys, values)  # (B, T, 64)
    plain = encode(encoder, enc["input_ids"], enc["attention_mask"])
    assert hidden.shape == plain.shape
    mask = enc["attention_mask"]
    for pooling in ("cls", "mean"):
        assert not torch.allclose(pool(hidden, mask, pooling), pool(plain, mask, pooling))
    pool(hidden, enc["attention_mask"], "mean")[:, 0].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prefix.parameters())
    assert all(p.grad is None for p in encoder.parameters())


def test_mean_pooling_ignores_padding():
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    torch.testing.assert_close(pool(hidden, mask, "mean")[0], hidden[0, :2].mean(0))
    torch.testing.assert_close(pool(hidden, mask, "cls"), hidden[:, 0])


def test_materialize_equals_the_mlp_and_shifts_like_bert_cache(encoder, tokenizer):
    """The materialised prefix gives the MLP's outputs; positions shift by P exactly as BertModel does with a cache."""
    prefix = PrefixEncoder(PrefixShape.of(encoder), length=5, reparameterize=True, prefix_hidden=32)
    keys, values = prefix()
    frozen = prefix.materialize("x")
    assert torch.equal(frozen.keys, keys.detach()) and torch.equal(frozen.values, values.detach())
    enc = tokenize(tokenizer, TEXTS, 512)[0]
    ours = encode(encoder, enc["input_ids"], enc["attention_mask"], frozen.keys, frozen.values)
    cache = DynamicCache(config=encoder.config)
    for layer in range(2):
        batch_k = frozen.keys[layer].unsqueeze(0).expand(len(TEXTS), -1, -1, -1)
        cache.update(batch_k, frozen.values[layer].unsqueeze(0).expand(len(TEXTS), -1, -1, -1), layer)
    mask = torch.cat([torch.ones(len(TEXTS), 5, dtype=torch.long), enc["attention_mask"]], dim=1)  # (B, P + T)
    with torch.no_grad():
        ref = encoder(input_ids=enc["input_ids"], attention_mask=mask, cache=cache).last_hidden_state
    torch.testing.assert_close(ours.detach(), ref, atol=1e-6, rtol=0)


def test_matches_peft_prefix_tuning(encoder, tokenizer):
    """Same hidden states as PEFT's prefix tuning given the same key/values (PEFT itself is not needed)."""
    import peft  # a core dependency: this comparison always runs
    model = build_encoder("tiny-bert", seed=0).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = peft.get_peft_model(model, peft.PrefixTuningConfig(task_type="FEATURE_EXTRACTION",
                                                                      num_virtual_tokens=4)).eval()
        enc = tokenize(tokenizer, TEXTS, 512)[0]
        with torch.no_grad():
            ref = wrapped(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            cache = wrapped.get_prompt(batch_size=1)
    keys = torch.stack([cache.layers[i].keys[0] for i in range(2)])  # (L, H, P, D)
    values = torch.stack([cache.layers[i].values[0] for i in range(2)])
    ours = encode(encoder, enc["input_ids"], enc["attention_mask"], keys.detach(), values.detach())
    torch.testing.assert_close(ours.detach(), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("combine", ["concat", "mean"])
def test_batched_k_prefixes_equal_separate_passes(tokenizer, attention, pooling, combine):
    encoder = build_encoder("tiny-bert", seed=0).eval()
    encoder.set_attn_implementation(attention)
    prefixes = make_prefixes(encoder)  # k = 3, lengths 3, 5, 8
    batched = extract(encoder, tokenizer, TEXTS, prefixes, pooling, combine, batch_size=2)
    separate = [extract(encoder, tokenizer, TEXTS, [p], pooling, batch_size=len(TEXTS)) for p in prefixes]
    want = torch.cat(separate, dim=1) if combine == "concat" else torch.stack(separate).mean(0)
    assert batched.shape == ((len(TEXTS), 3 * 64) if combine == "concat" else (len(TEXTS), 64))
    assert batched.dtype == torch.float32
    torch.testing.assert_close(batched, want, atol=1e-5, rtol=0)
    # zero prefixes: the frozen encoder alone
    enc = tokenize(tokenizer, TEXTS, 512)[0]
    with torch.no_grad():
        plain = pool(encoder(**enc).last_hidden_state, enc["attention_mask"], pooling)
    torch.testing.assert_close(extract(encoder, tokenizer, TEXTS, [], pooling, combine), plain, atol=1e-5, rtol=0)
    assert not torch.allclose(separate[0], plain, atol=1e-3)


def test_truncation_at_positions_minus_prefix_with_one_warning(encoder, tokenizer):
    prefixes = make_prefixes(encoder, lengths=(4, 8))
    long = " ".join(random.Random(0).choice(WORDS) for _ in range(700))
    texts = [long, "short text", long + " more", long]
    with pytest.warns(UserWarning) as record:
        out = extract(encoder, tokenizer, texts, prefixes, "mean", "concat", batch_size=2)
    messages = [str(w.message) for w in record if "truncated" in str(w.message)]
    assert messages == ["3 of 4 texts were longer than 504 tokens and were truncated "
                        "(max_position_embeddings 512 - prefix length 8)"]
    assert out.shape == (4, 128) and torch.isfinite(out).all()
    cut = tokenizer.decode(tokenizer(long, add_special_tokens=False)["input_ids"][:502])  # 504 with BOS and EOS
    torch.testing.assert_close(out[0], extract(encoder, tokenizer, [cut], prefixes, "mean")[0], atol=1e-5, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to cut: no warning
        extract(encoder, tokenizer, texts[1:2], prefixes)


# ---------------------------------------------------------------- registry


def test_registry_round_trip_and_mismatch(tmp_path, encoder, tokenizer):
    prefixes = make_prefixes(encoder, lengths=(3, 6))
    fp = model_fingerprint(encoder, "tiny-bert")
    for p in prefixes:
        save_prefix(tmp_path, p.name, p, task=p.name, backbone="tiny-bert", encoder_fingerprint=fp, pooling="mean",
                    encoder_seed=0, metrics={"val/acc": 0.5})
    infos = list_prefixes(tmp_path)
    assert [i.name for i in infos] == ["p0", "p1"] and infos[1].length == 6 and infos[0].metrics == {"val/acc": 0.5}
    assert sorted(p.name for p in (tmp_path / "p0").iterdir()) == ["prefix.json", "prefix.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
    loaded = [load_prefix(tmp_path, p.name, encoder=encoder, backbone="tiny-bert", encoder_fingerprint=fp)[0]
              for p in prefixes]
    assert torch.equal(extract(encoder, tokenizer, TEXTS, loaded), extract(encoder, tokenizer, TEXTS, prefixes))

    info = infos[0]
    with pytest.raises(ConfigError, match="trained on backbone 'tiny-bert', not 'hf:other'"):
        check_compatible(info, encoder, "hf:other")
    other = build_encoder("tiny-bert", seed=1)
    with pytest.raises(ConfigError, match="other weights"):
        check_compatible(info, other, "tiny-bert", model_fingerprint(other, "tiny-bert"))
    info.layers = 3
    with pytest.raises(ConfigError, match="needs 3 layers, 4 heads of size 16; encoder 'tiny-bert' has 2 layers"):
        check_compatible(info, encoder, "tiny-bert")
    wrong = Prefix(torch.zeros(3, 4, 2, 16), torch.zeros(3, 4, 2, 16), name="w")
    with pytest.raises(ConfigError, match="3 layers"):
        extract(encoder, tokenizer, TEXTS, [wrong])
    with pytest.raises(ConfigError, match="unknown prefix 'nope'.*known: p0, p1"):
        load_prefix(tmp_path, "nope")


# ---------------------------------------------------------------- PrefixTuning


def word_task(n: int, seed: int) -> list[tuple[str, int]]:
    """Known answer: label 1 iff the word 'apple' occurs."""
    rng, rows = random.Random(seed), []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 10))]
        if i % 2:
            words.insert(rng.randrange(len(words) + 1), "apple")
        rows.append((" ".join(words), i % 2))
    return rows


def loader(tokenizer, rows, batch_size: int, shuffle: bool = False) -> DataLoader:
    def collate(batch):
        enc = tokenize(tokenizer, [r[0] for r in batch], 512)[0]
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": torch.tensor([r[1] for r in batch])}

    return DataLoader(rows, batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                      generator=torch.Generator().manual_seed(0))


def trainer(steps: int, **kw) -> Trainer:
    return Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0, deterministic=True, **kw)


FIT_WARNINGS = pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode", "ignore:.*no `val_dataloader`")


@FIT_WARNINGS
def test_prefix_tuning_frozen_encoder_and_checkpoint(tmp_path, tokenizer):
    model = PrefixTuning(prefix_length=4, init_seed=0)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    prefix_before = model.materialize()
    model.train()
    assert not model.encoder.training and model.prefix.training
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"prefix", "head"}
    t = trainer(5, enable_checkpointing=False)
    t.fit(model, loader(tokenizer, word_task(40, 0), 8))
    after = model.encoder.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(model.materialize().keys, prefix_before.keys)

    path = tmp_path / "last.ckpt"
    t.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["state_dict"]
    assert state and all(k.startswith(("prefix.", "head.")) for k in state)
    restored = PrefixTuning.load_from_checkpoint(path)
    batch = next(iter(loader(tokenizer, word_task(8, 1), 8)))
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(batch), model.eval()(batch), atol=0, rtol=0)


@FIT_WARNINGS
def test_prefix_tuning_learns_word_presence_and_registers(tmp_path, tokenizer):
    model = PrefixTuning(task="apple", pooling="mean", lr=1e-2, registry=str(tmp_path / "reg"), init_seed=0)
    val = loader(tokenizer, word_task(200, 1000), 100)
    t = trainer(200, enable_checkpointing=False, limit_val_batches=2)
    t.fit(model, loader(tokenizer, word_task(512, 0), 16, shuffle=True), val)
    acc = t.validate(model, val, verbose=False)[0]["val/acc"]
    assert acc >= 0.8  # chance is 0.5; seeds 0-2 give 0.94 / 1.0 / 0.92
    (info,) = list_prefixes(tmp_path / "reg")
    assert (info.name, info.task, info.length, info.encoder_seed, info.pooling) == ("apple", "apple", 8, 0, "mean")
    assert "val/acc" in info.metrics
    prefix, _ = load_prefix(tmp_path / "reg", "apple", encoder=model.encoder, backbone="tiny-bert",
                            encoder_fingerprint=model_fingerprint(model.encoder, "tiny-bert"))
    texts = [r[0] for r in word_task(6, 5)]
    enc = tokenize(tokenizer, texts, 512)[0]
    with torch.no_grad():
        direct = model.eval().embed({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    torch.testing.assert_close(extract(model.encoder, tokenizer, texts, [prefix], "mean"), direct, atol=1e-5, rtol=0)


def test_prefix_tuning_regression_and_truncation(tokenizer):
    model = PrefixTuning(num_labels=1, prefix_length=2, max_length=4, init_seed=0)
    batch = {"input_ids": torch.randint(5, 100, (3, 9)), "attention_mask": torch.ones(3, 9, dtype=torch.long),
             "labels": torch.tensor([0.5, 1.0, -1.0])}
    with pytest.warns(UserWarning, match="3 of 3 texts were longer than 4 tokens"):
        logits = model(batch)
    assert logits.shape == (3, 1) and model.truncated == 3
    loss = model._loss(logits, batch["labels"])
    torch.testing.assert_close(loss, ((logits.squeeze(-1) - batch["labels"]) ** 2).mean())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # counted, not warned again
        model(batch)
    assert model.truncated == 6
    with pytest.raises(ConfigError):
        PrefixTuning(num_labels=0)


# ---------------------------------------------------------------- CLI


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_extract_cli_end_to_end(tmp_path, encoder, tokenizer, capsys):
    reg = tmp_path / "reg"
    fp = model_fingerprint(encoder, "tiny-bert")
    prefixes = make_prefixes(encoder, lengths=(3, 6))
    for p in prefixes:
        save_prefix(reg, p.name, p, task=p.name, backbone="tiny-bert", encoder_fingerprint=fp, pooling="mean",
                    encoder_seed=0)
    data = write_jsonl(tmp_path / "in.jsonl", [{"text": t, "label": i % 2} for i, t in enumerate(TEXTS)])
    out = tmp_path / "emb.safetensors"
    args = ["--registry", str(reg), "--backbone", "tiny-bert", "--input", str(data), "--label-field", "label",
            "--out", str(out), "--batch-size", "2"]
    assert extract_main(args) == 0
    assert "wrote" in capsys.readouterr().out
    tensors = load_file(out)
    assert tensors["embeddings"].shape == (5, 128) and tensors["embeddings"].dtype == torch.float32
    assert tensors["labels"].tolist() == [0, 1, 0, 1, 0] and tensors["labels"].dtype == torch.int64
    torch.testing.assert_close(tensors["embeddings"], extract(encoder, tokenizer, TEXTS, prefixes), atol=1e-6, rtol=0)
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["prefixes"]) == ["p0", "p1"] and meta["pooling"] == "mean" and meta["combine"] == "concat"
    assert meta["backbone"] == "tiny-bert" and meta["input"] == str(data) and len(meta["fingerprint"]) == 32

    stamp = out.stat().st_mtime_ns
    assert extract_main(args) == 0
    assert "reusing" in capsys.readouterr().out and out.stat().st_mtime_ns == stamp
    assert extract_main(args[:-2] + ["--batch-size", "2", "--combine", "mean"]) == 0  # other settings: recomputed
    assert "wrote" in capsys.readouterr().out
    # a pooling other than the one the prefixes were trained with is refused
    assert extract_main(args[:-2] + ["--batch-size", "2", "--pooling", "cls"]) == 2
    assert "differs from the pooling the prefixes were trained with ['mean']" in capsys.readouterr().err

    # Parquet, float labels, one prefix, mean combine; and the no-prefix baseline
    import pyarrow.parquet as pq

    floats = write_jsonl(tmp_path / "f.jsonl", [{"text": t, "y": i / 2} for i, t in enumerate(TEXTS)])
    pq_out = tmp_path / "emb.parquet"
    assert extract_main(["--registry", str(reg), "--backbone", "tiny-bert", "--prefixes", "p1", "--input",
                         str(floats), "--label-field", "y", "--out", str(pq_out), "--combine", "mean"]) == 0
    table = pq.read_table(pq_out)
    assert table.column_names == ["embedding", "label"] and str(table.schema.field("label").type) == "float"
    assert len(table.column("embedding")[0]) == 64 and table.schema.metadata[b"prefixes"] == b'["p1"]'
    base = tmp_path / "base.safetensors"
    assert extract_main(["--backbone", "tiny-bert", "--prefixes", "none", "--input", str(data), "--out",
                         str(base)]) == 0
    assert set(load_file(base)) == {"embeddings"} and load_file(base)["embeddings"].shape == (5, 64)
    capsys.readouterr()

    # errors: one line, exit 2, nothing written
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, {"txt": "no"}])
    cases = [
        (["--input", str(bad)], f"{bad}:2: missing text field 'text'"),
        (["--input", str(data), "--prefixes", "p0", "nope"], "unknown prefix 'nope'"),
        (["--input", str(data), "--seed", "3"], "other weights"),
    ]
    for extra, message in cases:
        new_out = tmp_path / "new.safetensors"
        code = extract_main(["--registry", str(reg), "--backbone", "tiny-bert", "--out", str(new_out), *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
        assert not new_out.exists()
