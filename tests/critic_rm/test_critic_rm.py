"""Critic-RM: losses and schedules by hand, the reward head's token, critique masks, data checks, learning, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from core.chat import DEFAULT_CRITIQUE_INSTRUCTION
from core.errors import ConfigError, DataError
from datamodules.reward import RewardDataModule, collate_reward
from lightning_modules.critic_rm.loss import bradley_terry_loss, critic_rm_loss, critique_weight
from lightning_modules.critic_rm.module import CriticRM, last_token_index
from train import main

EOT = "<|eot|>"
REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def pair(i: int = 0, **extra: Any) -> dict[str, Any]:
    row = {"prompt": f"Name {i + 2} fruits in lowercase.", "chosen": "apple and pear.", "rejected": "Apple and Pear.",
           "chosen_critique": "The response is in lowercase.\nScore: 9/10",
           "rejected_critique": "The response uses capitals.\nScore: 2/10"}
    row.update(extra)
    return row


def data(tmp_path: Path, rows: list[dict[str, Any]], **kwargs: Any) -> RewardDataModule:
    kwargs.setdefault("tokenizer", "tiny-llama")
    dm = RewardDataModule(train_files=str(write_jsonl(tmp_path / "train.jsonl", rows)), **kwargs)
    dm.setup()
    return dm


# -------------------------------------------------------------------------------------------------- losses
def test_bradley_terry_by_hand() -> None:
    loss, metrics = bradley_terry_loss(torch.tensor([1.0, 0.0, 3.0]), torch.tensor([0.0, 2.0, 3.0]))
    # margins 1, -2, 0: mean of log(1 + e^-1), log(1 + e^2), log 2
    expected = (math.log1p(math.exp(-1)) + math.log1p(math.exp(2)) + math.log(2)) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert metrics["rewards/accuracies"].tolist() == [1.0, 0.0, 0.0]  # a tie is not a win
    assert metrics["rewards/margins"].tolist() == [1.0, -2.0, 0.0]


@pytest.mark.parametrize(
    ("schedule", "step", "expected"),
    [
        ("constant", 70, 0.9),
        ("linear", 0, 0.9),
        ("linear", 25, 0.8),  # 0.9 + (0.5 - 0.9) * 0.25
        ("linear", 100, 0.5),
        ("linear", 150, 0.5),  # clipped after the end
        ("cosine", 0, 0.9),
        ("cosine", 50, 0.7),  # 0.5 + 0.4 * (1 + cos(pi/2)) / 2
        ("cosine", 25, 0.5 + 0.4 * (1 + math.cos(math.pi / 4)) / 2),  # 0.8414213...
        ("cosine", 100, 0.5),
    ],
)
def test_critique_weight_schedules(schedule: str, step: int, expected: float) -> None:
    assert critique_weight(step, 100, schedule, 0.9, 0.5) == pytest.approx(expected, abs=1e-12)


def test_critique_weight_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        critique_weight(0, 10, "linear", 1.5, 0.0)
    with pytest.raises(ValueError, match="unknown schedule"):
        critique_weight(0, 10, "step", 0.5, 0.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="in \\[0, 1\\]"):
        CriticRM(critique_weight_end=-0.1)
    with pytest.raises(ConfigError, match="critique_temperature > 0"):
        CriticRM(num_critiques=4, critique_temperature=0.0)


def test_joint_loss_by_hand() -> None:
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    bt = (math.log1p(math.exp(-1)) + math.log1p(math.exp(2))) / 2
    loss, metrics = critic_rm_loss(chosen, rejected, torch.tensor(2.0), 0.25, centering=0.1)
    center = ((1 + 0) ** 2 + (0 + 2) ** 2) / 2  # mean (r_c + r_r)^2 = 2.5
    assert loss.item() == pytest.approx(0.25 * 2.0 + 0.75 * bt + 0.1 * center, abs=1e-6)
    assert metrics["loss/bt"].item() == pytest.approx(bt, abs=1e-6)
    assert metrics["loss/centering"].item() == pytest.approx(2.5)
    plain, _ = critic_rm_loss(chosen, rejected, None, 0.0)
    assert plain.item() == pytest.approx(bt, abs=1e-6)
    with pytest.raises(ValueError, match="without critiques"):
        critic_rm_loss(chosen, rejected, None, 0.5)


# ------------------------------------------------------------------------------------- the reward's token
def test_last_token_index_left_and_right_padding() -> None:
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 4, 1]


@pytest.mark.parametrize("use_critiques", [True, False])
def test_reward_head_reads_the_last_real_token_under_any_padding(tmp_path: Path, use_critiques: bool) -> None:
    rows = [pair(0), pair(1, chosen="pear.", chosen_critique="Good.\nScore: 8/10"),
            pair(2, rejected="APPLE, PEAR AND PLUM, ALL IN CAPITALS, WHICH IS WRONG.")]
    dm = data(tmp_path, rows, with_critiques=use_critiques)
    model = CriticRM(use_critiques=use_critiques, reward_head_hidden=16).eval()
    examples = dm.datasets["train"]
    pad = dm.tokenizer.pad_token_id
    with torch.no_grad():
        per_side = {}
        for side in ("right", "left"):
            b = collate_reward(examples, pad, use_critiques, padding_side=side)
            hidden = model.hidden_states(b["input_ids"], b["attention_mask"], b["position_ids"])
            per_side[side] = model.rewards(hidden, b["attention_mask"])  # (2B,)
            assert b["attention_mask"].sum(-1).unique().numel() > 1  # rows really are padded
        alone = []
        for ex in examples:  # each sequence on its own: no padding at all
            b = collate_reward([ex], pad, use_critiques)
            hidden = model.hidden_states(b["input_ids"], b["attention_mask"], b["position_ids"])
            alone.append(model.rewards(hidden, b["attention_mask"]))
        alone_t = torch.stack(alone).T.reshape(-1)  # (2B,): chosen rows first, then rejected, as in batches
    torch.testing.assert_close(per_side["right"], alone_t, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(per_side["left"], alone_t, atol=1e-5, rtol=1e-5)
    # and the head reads the critique's end (the EOS of the last turn), not a pad or an earlier token
    b = collate_reward(examples, pad, use_critiques)
    last = last_token_index(b["attention_mask"])
    assert (b["input_ids"][torch.arange(len(last)), last] == dm.tokenizer.eos_token_id).all()


# ----------------------------------------------------------------------------------------- critique tokens
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_critique_mask_covers_exactly_the_critique(tmp_path: Path, padding_side: str) -> None:
    rows = [pair(0), pair(1, rejected_critique="Capitals everywhere, and the prompt forbids them.\nScore: 1/10")]
    dm = data(tmp_path, rows, padding_side=padding_side)
    b = collate_reward(dm.datasets["train"], dm.tokenizer.pad_token_id, True, padding_side=padding_side)
    tok = dm.tokenizer
    critiques = [r["chosen_critique"] for r in rows] + [r["rejected_critique"] for r in rows]
    for i, text in enumerate(critiques):
        predicted = b["targets"][i][b["critique_mask"][i]]
        assert tok.decode(predicted) == text + EOT  # the critique and its end of turn, nothing else
        # the tokens before the critique end with the instruction turn and the assistant header
        start = int(b["critique_mask"][i].nonzero()[0])
        head = tok.decode(b["input_ids"][i][: start + 1], skip_special_tokens=False)
        assert head.endswith(DEFAULT_CRITIQUE_INSTRUCTION + EOT + "<|start_header|>assistant<|end_header|>\n")


def test_critique_nll_equals_hf_labels_loss(tmp_path: Path) -> None:
    """A second implementation: HF's causal-LM loss with labels -100 everywhere but the critique tokens."""
    dm = data(tmp_path, [pair(0), pair(1, chosen="plum.")])
    b = collate_reward(dm.datasets["train"], dm.tokenizer.pad_token_id, True)
    model = CriticRM().eval()
    labels = torch.full_like(b["input_ids"], -100)
    labels[:, 1:][b["critique_mask"][:, :-1]] = b["input_ids"][:, 1:][b["critique_mask"][:, :-1]]
    with torch.no_grad():
        hf = model.policy(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=labels).loss
        ours = model.critique_nll(model.hidden_states(b["input_ids"], b["attention_mask"], b["position_ids"]), b)
    assert ours.item() == pytest.approx(hf.item(), abs=1e-5)


# ------------------------------------------------------------------------------------------------- data
def test_missing_critique_names_the_line_and_plain_mode_needs_none(tmp_path: Path) -> None:
    rows = [pair(0), {k: v for k, v in pair(1).items() if k != "rejected_critique"}]
    with pytest.raises(DataError, match=r"train\.jsonl:2: field 'rejected_critique' must be"):
        data(tmp_path, rows)
    assert len(data(tmp_path, rows, with_critiques=False).datasets["train"]) == 2


def test_critique_lists_expand_and_overflow_policies(tmp_path: Path) -> None:
    long = "This critique goes on and on about every single letter of the response. " * 3 + "Score: 5/10"
    rows = [pair(0, chosen_critique=["Lowercase.\nScore: 9/10", "Fine.\nScore: 8/10", "Good.\nScore: 7/10"],
                 rejected_critique=["Capitals.\nScore: 2/10"]), pair(1, rejected_critique=long)]
    with pytest.warns(UserWarning, match="train: 1 critiques were cut to max_critique_length"):
        dm = data(tmp_path, rows, max_critique_length=20)
    train = dm.datasets["train"]
    assert len(train) == 4  # three critiques of the first chosen (rejected one cycled), one for the second pair
    tok = dm.tokenizer
    assert tok.decode(train[1].chosen.critique) == "Fine.\nScore: 8/10" + EOT
    assert train[0].rejected.critique == train[2].rejected.critique
    assert len(train[3].rejected.critique) == 20 and dm.stats["train"]["critique_truncated"] == 1
    batch = collate_reward(train[3:], tok.pad_token_id, True)
    assert batch["critique_mask"][1].sum() == 20  # the rejected row learns exactly the 20 kept critique tokens
    assert batch["targets"][1][batch["critique_mask"][1]].tolist() == train[3].rejected.critique
    assert len(data(tmp_path, rows, max_critique_length=20, critique_overflow="drop").datasets["train"]) == 3
    with pytest.raises(DataError, match=r"train\.jsonl:2: rejected_critique has \d+ tokens, over max_critique_len"):
        data(tmp_path, rows, max_critique_length=20, critique_overflow="error")


def test_eval_files_need_no_critiques_and_keep_subsets(tmp_path: Path) -> None:
    rb = write_jsonl(tmp_path / "rb.jsonl", [
        {"id": 0, "prompt": "p", "chosen": "a", "rejected": "b", "subset": "alpacaeval-easy"},
        {"id": 1, "prompt": "q", "chosen": "c", "rejected": "d", "subset": "math-prm"},
        {"id": 2, "prompt": "r", "chosen": "e", "rejected": "f", "subset": "alpacaeval-easy"},
    ])
    dm = RewardDataModule(test_files=str(rb), tokenizer="tiny-llama")
    dm.setup()
    assert dm.subsets["test"] == ["alpacaeval-easy", "math-prm"]
    assert [ex.subset for ex in dm.datasets["test"]] == [0, 1, 0]
    assert all(ex.chosen.critique is None for ex in dm.datasets["test"])


# -------------------------------------------------------------------------------------------- learning
def fit(use_critiques: bool, epochs: int) -> tuple[CriticRM, Trainer]:
    seed_everything(0)
    model = CriticRM(use_critiques=use_critiques, max_critique_tokens=32, warmup_steps=10)
    dm = RewardDataModule(train_files=str(REPO / "data/critic/train.jsonl"),
                          val_files=str(REPO / "data/critic/val.jsonl"), batch_size=16, max_length=160,
                          max_prompt_length=64, max_critique_length=48)
    trainer = Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      check_val_every_n_epoch=epochs, deterministic=True)
    trainer.fit(model, dm)
    return model, trainer


def test_joint_and_plain_reward_models_learn_the_planted_feature(capsys: pytest.CaptureFixture) -> None:
    """Held-out pairs differ by the feature the critiques name; both models must rank them, at equal steps.

    The joint model is scored the inference way: it writes its own critique (greedy), then scores it.
    """
    joint, t_joint = fit(True, epochs=8)
    plain, t_plain = fit(False, epochs=8)
    acc_joint = float(t_joint.callback_metrics["val/accuracy"])
    acc_plain = float(t_plain.callback_metrics["val/accuracy"])
    with capsys.disabled():
        print(f"\nheld-out accuracy after {t_joint.global_step} steps: joint {acc_joint:.3f}, plain {acc_plain:.3f}")
    assert t_joint.global_step == t_plain.global_step
    assert acc_plain >= 0.9
    assert acc_joint >= 0.8  # chance is 0.5
    assert float(t_joint.callback_metrics["val/loss/critique"]) < 1.0  # critique NLL (starts near ln 4096 ~ 8.3)


# ----------------------------------------------------------------------------------------------------- CLI
def cli_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(REPO / "configs/critic_rm.yaml"), "--trainer.max_steps", "4",
            "--trainer.limit_val_batches", "1", "--data.eval_batch_size", "4", "--trainer.enable_progress_bar",
            "false", "--trainer.default_root_dir", str(tmp_path), "--trainer.callbacks.dirpath",
            str(tmp_path / "ckpt"), "--data.train_files", str(REPO / "data/critic/val.jsonl"), *extra]


def test_cli_fit_test_score_and_export(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cli = main(cli_args(tmp_path))
    assert cli.trainer.global_step == 4 and isinstance(cli.model, CriticRM) and cli.model.hparams.use_critiques
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    assert ckpt.is_file()
    # RewardBench-format evaluation through train.py test: per-subset and section metrics
    cli = main(["test", "--config", str(REPO / "configs/critic_rm.yaml"), "--data.test_files",
                str(REPO / "data/rewardbench_tiny.jsonl"), "--ckpt_path", str(ckpt), "--trainer.default_root_dir",
                str(tmp_path), "--trainer.enable_progress_bar", "false", "--trainer.callbacks.dirpath",
                str(tmp_path / "ckpt")])
    metrics = cli.trainer.callback_metrics
    sections = [metrics[f"test/section/{s}"].item() for s in ("Chat", "Chat Hard", "Safety", "Reasoning")]
    assert metrics["test/score"].item() == pytest.approx(sum(sections) / 4, abs=1e-6)
    assert 0.0 <= metrics["test/accuracy"].item() <= 1.0 and "test/subset/math-prm" in metrics
    # batch scoring with m = 2 sampled critiques per response
    from pipelines.score_rewards import main as score_main

    out = tmp_path / "scored.jsonl"
    assert score_main(["--ckpt", str(ckpt), "--input", str(REPO / "data/rewardbench_tiny.jsonl"), "--out", str(out),
                       "--num-critiques", "2", "--temperature", "0.8", "--max-critique-tokens", "8"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 64
    for row in rows[:5]:
        assert len(row["chosen_rewards"]) == 2 and len(row["rejected_critiques"]) == 2
        assert row["chosen_reward"] == pytest.approx(sum(row["chosen_rewards"]) / 2)
    assert "pairwise accuracy" in capsys.readouterr().out
    # export: the LM loads with from_pretrained, the head is safetensors
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = CriticRM.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    folder = model.export_pretrained(tmp_path / "exported")
    AutoModelForCausalLM.from_pretrained(folder)
    head = load_file(folder / "reward_head.safetensors")
    torch.testing.assert_close(head["net.0.weight"], model.reward_head.net[0].weight.detach())


def test_cli_plain_baseline_and_bad_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cli = main(cli_args(tmp_path, "--model.use_critiques", "false", "--trainer.max_steps", "2"))
    assert cli.trainer.global_step == 2 and "train/loss/critique" not in cli.trainer.callback_metrics
    bad = write_jsonl(tmp_path / "bad.jsonl", [pair(0), {k: v for k, v in pair(1).items() if k != "chosen_critique"}])
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args(tmp_path / "bad", "--data.train_files", str(bad)))
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {bad}:2: field 'chosen_critique' must be")
    assert not (tmp_path / "bad" / "ckpt").exists()


def test_lora_checkpoint_keeps_adapter_and_reward_head(tmp_path: Path) -> None:
    model = CriticRM(lora_r=4, reward_head_hidden=8)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if "lora_" in n or n.startswith("reward_head.")}
    assert any(n.startswith("reward_head.") for n in trainable)
    dm = data(tmp_path, [pair(i) for i in range(4)], batch_size=2)
    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    path = tmp_path / "lora.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert set(saved) == {n for n, p in model.named_parameters() if p.requires_grad}
    restored = CriticRM.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[k], v)


def test_ddp_two_processes_sync_validation_accuracy(tmp_path: Path) -> None:
    """Two CPU ranks each score half the validation pairs; rank 0 logs the accuracy over all of them."""
    import csv
    import os
    import subprocess
    import sys

    val_rows = [json.loads(line) for line in (REPO / "data/critic/val.jsonl").read_text().splitlines()[:6]]
    val = write_jsonl(tmp_path / "val.jsonl", val_rows)  # 6 pairs: 3 per rank, no padding by the sampler
    args = [sys.executable, str(REPO / "train.py"), *cli_args(tmp_path, "--data.val_files", str(val),
            "--trainer.limit_val_batches", "1.0", "--trainer.max_steps", "2", "--trainer.devices", "2",
            "--trainer.strategy", "ddp", "--trainer.val_check_interval", "2", "--trainer.num_sanity_val_steps", "0",
            "--model.max_critique_tokens", "8")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(next(tmp_path.rglob("metrics.csv")).open()))
    logged = float(next(r for r in rows if r.get("val/accuracy"))["val/accuracy"])
    model = CriticRM.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    dm = RewardDataModule(val_files=str(val), train_files=str(val), batch_size=16, max_length=160,
                          max_prompt_length=64, max_critique_length=48)
    single = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (result,) = single.validate(model, dm, verbose=False)
    assert logged == pytest.approx(result["val/accuracy"], abs=1e-6)  # over all 6 pairs, as one process sees them


def test_predict_returns_mean_and_per_critique_rewards(tmp_path: Path) -> None:
    rb = write_jsonl(tmp_path / "rb.jsonl", [{k: v for k, v in pair(i).items() if "critique" not in k}
                                             for i in range(3)])
    model = CriticRM(num_critiques=3, critique_temperature=1.0, max_critique_tokens=6)
    dm = RewardDataModule(predict_files=str(rb), tokenizer="tiny-llama", batch_size=2)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    out = trainer.predict(model, dm)
    assert [p["index"].tolist() for p in out] == [[0, 1], [2]]
    first = out[0]
    assert first["chosen_rewards"].shape == (2, 3) and len(first["rejected_critiques"][1]) == 3
    torch.testing.assert_close(first["chosen_reward"], first["chosen_rewards"].mean(-1))
    assert len(set(first["chosen_critiques"][0])) > 1  # m sampled critiques of one response differ


# ------------------------------------------------------------------------------------ other chat templates
# A template whose assistant turn closes with a token other than EOS, followed by a newline (as ChatML's
# "<|im_end|>\n" or Gemma's "<end_of_turn>\n"): here <|end_header|> stands in for that closing token.
OTHER_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header|>{{ m['role'] }}\n{{ m['content'] }}<|end_header|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|start_header|>assistant\n{% endif %}"
)


def test_critique_ends_at_the_templates_end_of_turn_and_generation_stops_there(tmp_path: Path) -> None:
    model = CriticRM(reward_head_hidden=8).eval()
    model.tokenizer.chat_template = OTHER_TEMPLATE
    end = model.tokenizer.convert_tokens_to_ids("<|end_header|>")
    assert end != model.tokenizer.eos_token_id and end in model.stop_ids()
    dm = RewardDataModule(train_files=str(write_jsonl(tmp_path / "t.jsonl", [pair(0), pair(1)])), batch_size=2)
    trainer = Trainer(accelerator="cpu", logger=False, max_steps=0, enable_progress_bar=False)
    trainer.fit(model, dm)  # attaches the datamodule to the model (its tokenizer and instruction)
    ex = dm.datasets["train"][0]
    assert ex.chosen.critique[-1] == end  # the trailing newline is not part of the critique
    teacher = collate_reward([ex], model.tokenizer.pad_token_id, True)
    with torch.no_grad():
        hidden = model.hidden_states(teacher["input_ids"], teacher["attention_mask"], teacher["position_ids"])
        expected = model.rewards(hidden, teacher["attention_mask"])  # (2,)
    # generation that writes exactly the training critique, stops at the closing token and pads after it
    requests = teacher["requests"]
    critiques = [ex.chosen.critique, ex.rejected.critique]

    def scripted_generate(input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        assert kwargs["eos_token_id"] == model.stop_ids()
        width = max(len(c) for c in critiques) + 3
        new = torch.full((len(critiques), width), model.tokenizer.pad_token_id)
        for i, c in enumerate(critiques):
            new[i, : len(c)] = torch.tensor(c)
            new[i, len(c) : len(c) + 2] = torch.tensor([5, 6])  # junk after the stop token must be ignored
        return torch.cat([input_ids, new], dim=1)

    model.policy.generate = scripted_generate
    rewards, texts = model.score_requests(requests)
    torch.testing.assert_close(rewards.squeeze(-1), expected, atol=1e-5, rtol=1e-5)
    assert texts[0] == [pair(0)["chosen_critique"]]


# ----------------------------------------------------------------------------------------- bad settings
def test_mismatched_modes_and_bad_settings_are_refused(tmp_path: Path) -> None:
    dm = RewardDataModule(train_files=str(write_jsonl(tmp_path / "t.jsonl", [pair(0)])), with_critiques=False)
    trainer = Trainer(accelerator="cpu", logger=False, max_steps=1, enable_progress_bar=False)
    with pytest.raises(ConfigError, match="with_critiques=False but the model use_critiques=True"):
        trainer.fit(CriticRM(), dm)
    for kwargs in ({"critique_top_p": 0.0}, {"critique_temperature": -1.0}, {"centering": -0.5}):
        with pytest.raises(ConfigError):
            CriticRM(**kwargs)
    with pytest.raises(ConfigError, match="critique_overflow"):
        RewardDataModule(train_files="x.jsonl", critique_overflow="cut")  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"train\.jsonl:1: field 'subset' must be a non-empty string"):
        data(tmp_path, [pair(0, subset="")])


def test_score_cli_refuses_bad_settings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pipelines.score_rewards import main as score_main

    ckpt = tmp_path / "m.ckpt"
    trainer = Trainer(accelerator="cpu", logger=False, max_steps=1, enable_progress_bar=False)
    trainer.fit(CriticRM(), data(tmp_path, [pair(0), pair(1)], batch_size=2))
    trainer.save_checkpoint(ckpt)
    rows = write_jsonl(tmp_path / "in.jsonl", [pair(0)])
    out = tmp_path / "out.jsonl"
    for extra, message in ((["--num-critiques", "3"], "critique_temperature > 0"),
                           (["--max-critique-tokens", "0"], "max_critique_tokens must be >= 1"),
                           (["--batch-size", "0"], "batch_size must be >= 1")):
        assert score_main(["--ckpt", str(ckpt), "--input", str(rows), "--out", str(out), *extra]) == 2
        assert message in capsys.readouterr().err
    assert not out.exists()
