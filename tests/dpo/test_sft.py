"""SFT: the response NLL by hand, exact batches and data validation, parity with HF's loss, learning, CLI, LoRA."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer, seed_everything

from core.backbones import load_tokenizer
from core.errors import ConfigError, DataError
from core.losses import response_nll
from datamodules.sft import SFTDataModule, collate_sft
from lightning_modules.dpo.sft import SFT
from train import main

EOT = "<|eot|>"  # the tiny chat template's end of turn (= the tokenizer's EOS)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-llama")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def data(path: Path, **kwargs: Any) -> SFTDataModule:
    dm = SFTDataModule(train_files=str(path), tokenizer="tiny-llama", **kwargs)
    dm.setup()
    return dm


def hf_labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """HF-style labels: input_ids where the token is a response token, -100 elsewhere (HF shifts internally)."""
    labels = torch.full_like(batch["input_ids"], -100)
    predicted = batch["loss_mask"][:, :-1]  # position t predicts token t + 1
    labels[:, 1:][predicted] = batch["input_ids"][:, 1:][predicted]
    return labels


def trainer(**kwargs: Any) -> Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, limit_val_batches=0)
    return Trainer(**{**defaults, **kwargs})


# -------------------------------------------------------------------------------------------------- loss
def test_response_nll_by_hand() -> None:
    # Row 0 uniform: -log(1/4) = ln 4. Row 1 softmax of ln(1..4) = (1, 2, 3, 4) / 10, target 3: -ln 0.4 = ln 2.5.
    # Row 2 is masked out (alone it costs ln(e^5 + 3) = 5 + ln(1 + 3e^-5) nats).
    # Mean over the 2 tokens in the mask: (ln 4 + ln 2.5) / 2 = ln(10) / 2.
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0],
                           [0.0, math.log(2), math.log(3), math.log(4)],
                           [5.0, 0.0, 0.0, 0.0]])
    targets = torch.tensor([2, 3, 1])
    mask = torch.tensor([True, True, False])
    loss, metrics = response_nll(logits, targets, mask)
    assert loss.item() == pytest.approx(math.log(10) / 2, abs=1e-6)
    assert metrics["nll"].item() == pytest.approx(math.log(10) / 2, abs=1e-6)
    assert metrics["tokens"].item() == 2
    # Only row 2 in the mask: its own NLL.
    loss, _ = response_nll(logits, targets, ~mask)
    assert loss.item() == pytest.approx(5 + math.log(1 + 3 * math.exp(-5)), abs=1e-6)
    # Nothing in the mask: zero loss, zero tokens (no division by zero, no made-up token count).
    loss, metrics = response_nll(logits, targets, torch.zeros(3, dtype=torch.bool))
    assert loss.item() == 0.0 and metrics["tokens"].item() == 0


def test_response_nll_matches_cross_entropy_with_ignore_index() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 11, generator=gen)  # (B, T, V)
    targets = torch.randint(0, 11, (2, 7), generator=gen)
    mask = torch.rand(2, 7, generator=gen) < 0.5
    assert 0 < mask.sum() < mask.numel()
    loss, metrics = response_nll(logits.flatten(0, 1), targets.flatten(), mask.flatten())
    expected = F.cross_entropy(logits.flatten(0, 1), targets.masked_fill(~mask, -100).flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)
    assert metrics["tokens"].item() == mask.sum().item()
    # Half-precision logits are scored in float32 (the loss is as exact as the upcast logits allow).
    loss16, _ = response_nll(logits.flatten(0, 1).bfloat16(), targets.flatten(), mask.flatten())
    assert loss16.dtype == torch.float32
    ref = F.cross_entropy(logits.flatten(0, 1).bfloat16().float(), targets.masked_fill(~mask, -100).flatten())
    torch.testing.assert_close(loss16, ref, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------- collate
def test_collate_sft_exact() -> None:
    batch = collate_sft([([1, 5, 6], [7, 8]), ([1, 9], [10])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7, 8], [1, 9, 10, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    # targets[t] = input_ids[t + 1]; the last column is never scored.
    assert batch["targets"][:, :-1].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    # True exactly where the next token is a response token: positions 2, 3 (-> 7, 8) and 1 (-> 10).
    assert batch["loss_mask"].tolist() == [[False, False, True, True, False], [False, True, False, False, False]]
    assert batch["targets"][batch["loss_mask"]].tolist() == [7, 8, 10]
    assert batch["input_ids"].dtype == batch["targets"].dtype == torch.long
    assert batch["loss_mask"].dtype == torch.bool


# ---------------------------------------------------------------------------------------------- datamodule
def test_prompt_response_boundary_is_exact(tmp_path: Path, tok) -> None:
    rows = [{"prompt": "What is 2+2?", "response": "It is 4, of course!"},
            {"prompt": [{"role": "user", "content": "Colour of grass?"}],
             "response": [{"role": "assistant", "content": "Green."}]}]
    dm = data(write_jsonl(tmp_path / "a.jsonl", rows))
    assert len(dm.datasets["train"]) == 2 and "val" not in dm.datasets
    for (p_ids, r_ids), prompt, response in zip(
        dm.datasets["train"], ["What is 2+2?", "Colour of grass?"], ["It is 4, of course!", "Green."], strict=True
    ):
        assert tok.decode(r_ids) == response + EOT
        assert tok.decode(p_ids) == tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        assert p_ids[0] == tok.bos_token_id and (p_ids + r_ids).count(tok.bos_token_id) == 1
        assert r_ids[-1] == tok.eos_token_id and r_ids.count(tok.eos_token_id) == 1
    # In a batch the scored targets are exactly the response tokens, end of turn included.
    batch = next(iter(data(tmp_path / "a.jsonl", shuffle=False, batch_size=2).train_dataloader()))
    for i, (_, r_ids) in enumerate(dm.datasets["train"]):
        assert batch["targets"][i][batch["loss_mask"][i]].tolist() == r_ids
        assert batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist() == sum(dm.datasets["train"][i], [])


def test_response_field_chosen_reads_pair_files(tmp_path: Path, tok) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Name a fruit.", "chosen": "Apple.", "rejected": "Car."}])
    dm = data(path, response_field="chosen")
    ((_, r_ids),) = dm.datasets["train"]
    assert tok.decode(r_ids) == "Apple." + EOT
    with pytest.raises(DataError, match=f"{path}:1: missing field 'response'"):
        data(path)  # the default field is `response`


@pytest.mark.parametrize(
    ("row", "message"),
    [({"prompt": "a"}, ":2: missing field 'response'"),
     ({"response": "b"}, ":2: missing field 'prompt'"),
     ({"prompt": "a", "response": "  \n"}, ":2: field 'response' is empty"),
     ({"prompt": " ", "response": "b"}, ":2: field 'prompt' is empty"),
     ({"prompt": "a", "response": 3}, ":2: field 'response' must be a string")],
    ids=["no-response", "no-prompt", "empty-response", "empty-prompt", "not-a-string"],
)
def test_bad_rows_name_file_line_and_field(tmp_path: Path, row: dict, message: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "response": "fine"}, row])
    with pytest.raises(DataError, match=f"^{path}{message}"):
        data(path)


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="needs train_files or hf_dataset"):
        SFTDataModule(tokenizer="tiny-llama")
    with pytest.raises(ConfigError, match="max_prompt_length < max_length"):
        SFTDataModule(train_files="x.jsonl", max_length=32, max_prompt_length=32)


def test_long_prompt_dropped_and_long_response_cut(tmp_path: Path, tok) -> None:
    long_prompt = " ".join(["word"] * 40)
    long_response = " ".join(f"item {i}" for i in range(40))
    rows = [{"prompt": "Short.", "response": "Fine."},
            {"prompt": long_prompt, "response": "Dropped."},
            {"prompt": "List items.", "response": long_response}]
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    with pytest.warns(UserWarning) as record:
        dm = data(path, max_length=24, max_prompt_length=20)
    messages = [str(w.message) for w in record]
    assert "train: 1 examples with a prompt over max_prompt_length were dropped" in messages
    assert "train: 1 responses were cut to fit max_length" in messages
    (p0, r0), (p2, r2) = dm.datasets["train"]
    assert tok.decode(r0) == "Fine." + EOT and len(p0) + len(r0) < 24
    assert len(p2) + len(r2) == 24  # cut to exactly max_length, the prompt kept whole
    full = tok(long_response + EOT, add_special_tokens=False)["input_ids"]
    assert r2 == full[: 24 - len(p2)] and tok.eos_token_id not in r2
    # Nothing usable left is an error, not an empty run.
    write_jsonl(path, [rows[1]])
    with pytest.warns(UserWarning, match="dropped"), pytest.raises(DataError, match="no usable training examples"):
        data(path, max_length=24, max_prompt_length=20)


# ------------------------------------------------------------------------------------------------ module
def test_loss_equals_hf_causal_lm_loss(tmp_path: Path) -> None:
    rows = [{"prompt": "Say hi.", "response": "Hi there, friend!"},
            {"prompt": "Name a colour, please, and be brief about it.", "response": "Red."},
            {"prompt": "Count.", "response": "One two three four five six."}]
    dm = data(write_jsonl(tmp_path / "a.jsonl", rows), shuffle=False, batch_size=3)
    batch = next(iter(dm.train_dataloader()))
    assert len(set(batch["attention_mask"].sum(1).tolist())) == 3  # three lengths: padding is exercised
    model = SFT(backbone="tiny-llama").eval()
    with torch.no_grad():
        loss, metrics = model._loss(batch)
        hf = model.policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=hf_labels(batch)).loss
    torch.testing.assert_close(loss, hf, atol=1e-5, rtol=0)
    assert metrics["tokens"].item() == sum(len(r) for _, r in dm.datasets["train"])
    assert loss.item() == pytest.approx(math.log(len(dm.tokenizer)), abs=0.3)  # random init: about ln V


WORDS = ("apple", "green", "tiger", "lemon")
TRAIN_TEMPLATES = ("Say {}.", "Please say {}.", "Reply with {}.", "Answer with the word {}.", "Just say {}.",
                   "Write {}.", "Output {}.", "Say {} now.")
HELD_OUT_TEMPLATES = ("Respond with {}.", "Can you say {}?")


def planted(path: Path, templates: tuple[str, ...]) -> Path:
    return write_jsonl(path, [{"prompt": t.format(w), "response": w} for t in templates for w in WORDS])


def test_learns_a_planted_task(tmp_path: Path) -> None:
    """Repeat one of four words: after 60 steps held-out phrasings are answered right, greedily."""
    seed_everything(0, verbose=False)
    dm = SFTDataModule(train_files=str(planted(tmp_path / "train.jsonl", TRAIN_TEMPLATES)),
                       val_files=str(planted(tmp_path / "val.jsonl", HELD_OUT_TEMPLATES)), tokenizer="tiny-llama",
                       batch_size=8, max_length=64, max_prompt_length=48)
    # lr 3e-3: at 1e-2 AdamW stalls on the plateau of the format alone (right length, a uniform guess among the
    # four words: ln(4) / 2 nats a token).
    model = SFT(backbone="tiny-llama", lr=3e-3)
    dm.setup()
    val = collate_sft(dm.datasets["val"], pad_id=dm.tokenizer.pad_token_id)

    def val_loss() -> float:
        model.eval()
        with torch.no_grad():
            return model._loss(val)[0].item()

    before = val_loss()
    model.train()
    trainer(max_steps=60).fit(model, datamodule=dm)
    after = val_loss()
    assert before > 7.0  # random init: about ln(4096) = 8.3
    assert after < 0.5 * math.log(4) / 2  # well past the format-only plateau: it knows which word
    correct = 0
    with torch.no_grad():
        for p_ids, r_ids in dm.datasets["val"]:
            out = model.policy.generate(torch.tensor([p_ids]), max_new_tokens=len(r_ids) + 1, do_sample=False,
                                        pad_token_id=dm.tokenizer.pad_token_id,
                                        eos_token_id=dm.tokenizer.eos_token_id)
            correct += out[0, len(p_ids):].tolist() == r_ids  # the word, then end of turn, then stop
    assert correct >= 7, f"{correct}/8 held-out prompts answered"


# ---------------------------------------------------------------------------------------------------- CLI
def cli_args(tmp_path: Path, train: Path, val: Path, *extra: str) -> list[str]:
    return ["fit", "--model", "SFT", "--data", "SFTDataModule", "--data.train_files", str(train),
            "--data.val_files", str(val), "--data.max_length", "64", "--data.max_prompt_length", "32",
            "--data.batch_size", "8", "--data.eval_batch_size", "3", "--trainer.max_steps", "3",
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(tmp_path), *extra]


def test_cli_fit_writes_checkpoint_and_token_weighted_val_loss(tmp_path: Path) -> None:
    train = planted(tmp_path / "train.jsonl", TRAIN_TEMPLATES[:6])  # 24 examples: 3 steps = one epoch
    val = write_jsonl(tmp_path / "val.jsonl", [
        {"prompt": "Say apple.", "response": "apple"},
        {"prompt": "Describe a tiger.", "response": "A tiger is a large striped cat that hunts alone at night."},
        {"prompt": "Name a fruit.", "response": "Lemon, of course."},
        {"prompt": "Say green.", "response": "green"},
    ])
    cli = main(cli_args(tmp_path, train, val, "--model.lr", "1e-2"))
    assert cli.trainer.global_step == 3
    (ckpt,) = (tmp_path / "lightning_logs").rglob("*.ckpt")
    assert ckpt.name == "epoch=0-step=3.ckpt"
    logged = float(cli.trainer.callback_metrics["val/loss"])
    rows = list(csv.DictReader(next((tmp_path / "lightning_logs").rglob("metrics.csv")).open()))
    assert float(next(r for r in rows if r.get("val/loss"))["val/loss"]) == pytest.approx(logged, rel=1e-6)
    # Independently: HF's loss over the whole val set in one batch is the token mean over all responses; the
    # logged value (two batches of 3 + 1 examples, very different lengths) must be that, not a mean of batch means.
    model = SFT.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    batch = collate_sft(cli.datamodule.datasets["val"], pad_id=cli.datamodule.tokenizer.pad_token_id)
    with torch.no_grad():
        hf = model.policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=hf_labels(batch)).loss.item()
        first, last = (model._loss(collate_sft(cli.datamodule.datasets["val"][s], 0))[0].item()
                       for s in (slice(0, 3), slice(3, 4)))
    assert logged == pytest.approx(hf, abs=1e-5)
    assert abs((first + last) / 2 - hf) > 1e-3  # the two means differ here, so the check above is sharp
    assert logged < math.log(4096)  # 3 steps at lr 1e-2 already moved it
    # the export command recognises an SFT checkpoint (no --module needed) and writes the trained weights
    from transformers import AutoModelForCausalLM

    from pipelines.export import main as export_main

    argv, sys.argv = sys.argv, ["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "exported")]
    try:
        export_main()
    finally:
        sys.argv = argv
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "exported").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch["input_ids"]).logits, model.policy(batch["input_ids"]).logits)


def test_cli_bad_data_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = planted(tmp_path / "train.jsonl", TRAIN_TEMPLATES[:1])
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "a", "answer": "b"}])
    for train, val in ((bad, good), (good, bad)):
        with pytest.raises(SystemExit) as exit_info:
            main(cli_args(tmp_path, train, val))
        assert exit_info.value.code == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert errors == [f"error: {bad}:2: missing field 'response' (expected prompt and response)"]
    assert not list(tmp_path.rglob("*.ckpt"))


# --------------------------------------------------------------------------------------- LoRA and export
def test_lora_checkpoint_holds_only_the_adapter_and_restores(tmp_path: Path) -> None:
    model = SFT(backbone="tiny-llama", lora_r=4, lr=1e-2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    dm = SFTDataModule(train_files=str(planted(tmp_path / "t.jsonl", TRAIN_TEMPLATES[:2])), tokenizer="tiny-llama")
    t = trainer(max_steps=1)
    t.fit(model, datamodule=dm)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    lora_b = [k for k in trained if "lora_B" in k]
    assert lora_b and any(trained[k].abs().sum() > 0 for k in lora_b)  # lora_B starts at zero: a step moved it
    path = tmp_path / "lora.ckpt"
    t.save_checkpoint(path)
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert set(state) == trainable  # no frozen base weight written
    assert sum(v.numel() for v in state.values()) < 0.1 * sum(v.numel() for v in trained.values())
    loaded = SFT.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    restored = loaded.state_dict()
    assert set(restored) == set(trained)
    for k, v in trained.items():
        assert torch.equal(restored[k], v), k


@pytest.mark.parametrize("lora_r", [0, 4], ids=["full", "lora-merged"])
def test_export_pretrained_round_trip(tmp_path: Path, lora_r: int) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = SFT(backbone="tiny-llama", lora_r=lora_r).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move the trainable weights off their init so the export has something to carry
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    out = model.export_pretrained(tmp_path / "exported")
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tok.apply_chat_template([{"role": "user", "content": "Say apple."}],
                                                add_generation_prompt=True, tokenize=True)["input_ids"]])
    assert ids[0].tolist() == model.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say apple."}], add_generation_prompt=True, tokenize=True)["input_ids"]
    with torch.no_grad():
        expected = model.policy(ids).logits
        torch.testing.assert_close(loaded(ids).logits, expected, atol=1e-5, rtol=1e-5)
        if lora_r:  # the adapter is really merged in: the plain base gives other logits
            assert not torch.allclose(SFT(backbone="tiny-llama").policy(ids).logits, expected, atol=1e-3)
