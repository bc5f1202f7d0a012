"""Multi-task baseline, the update path (one new prefix, nothing else retrains) and the report command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from safetensors import safe_open
from safetensors.torch import load_file

from datamodules.multitask import MultiTaskDataModule
from datamodules.multitask_synthetic import write_suite
from lightning_modules.prefix.multitask import MultiTaskEncoder
from pipelines.prefix_extract import main as extract_main
from pipelines.prefix_report import main as report_main
from train import main as train_main

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("suite") / "multitask"
    write_suite(out, n_train=96, n_val=32, n_test=32, seed=0)
    return out / "tasks.json"


def test_multitask_encoder_learns_all_sources_and_reloads(tmp_path: Path, suite: Path) -> None:
    seed_everything(0)
    dm = MultiTaskDataModule(manifest=str(suite), roles=["source"], tokenizer="tiny-bert", batch_size=16)
    model = MultiTaskEncoder(lr=3e-3)
    trainer = Trainer(accelerator="cpu", max_epochs=4, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(model, dm)
    assert sorted(model.heads) == ["src_count", "src_marked", "src_negation", "src_topic"]
    assert model.hparams.tasks == {"src_topic": 5, "src_negation": 2, "src_count": 4, "src_marked": 2}
    metrics = trainer.callback_metrics
    assert metrics["val/src_negation/accuracy"] >= 0.9  # one word decides it
    assert metrics["val/src_topic/accuracy"] >= 0.6  # chance 0.2
    path = tmp_path / "mt.ckpt"
    trainer.save_checkpoint(path)
    restored = MultiTaskEncoder.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()
    batch = next(iter(dm.val_dataloader()[0]))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(restored.pooled(batch["input_ids"], batch["attention_mask"]),
                                   model.pooled(batch["input_ids"], batch["attention_mask"]))
    # the exported encoder gives the same fixed representations as the trained module (no prefix)
    from transformers import AutoModel

    folder = model.export_pretrained(tmp_path / "encoder")
    loaded = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        hidden = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close((hidden * mask).sum(1) / mask.sum(1), model.pooled(batch["input_ids"],
                                                                                   batch["attention_mask"]))


def _fit_prefix(tmp_path: Path, suite: Path, task: str, labels: int) -> None:
    train_main(["fit", "--config", str(REPO / "configs/prefix.yaml"), "--model.task", task, "--data.task", task,
                "--model.num_labels", str(labels), "--data.manifest", str(suite), "--model.registry",
                str(tmp_path / "registry"), "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path),
                "--trainer.enable_progress_bar", "false"])


def test_adding_a_source_task_trains_one_prefix_and_reextracts(tmp_path: Path, suite: Path) -> None:
    """The update path: earlier prefixes are untouched; the new representation is the old one plus a block."""
    for task, labels in (("src_topic", 5), ("src_negation", 2)):
        _fit_prefix(tmp_path, suite, task, labels)
    registry = tmp_path / "registry"
    before = {p.name: (p / "prefix.safetensors").read_bytes() for p in registry.iterdir()}
    texts = suite.parent / "tgt_topic_neg" / "test.jsonl"
    common = ["--registry", str(registry), "--backbone", "tiny-bert", "--prefixes", "all", "--input", str(texts),
              "--label-field", "label"]
    assert extract_main([*common, "--out", str(tmp_path / "two.safetensors")]) == 0
    _fit_prefix(tmp_path, suite, "src_count", 4)  # the new source task: one prefix, nothing else trains
    after = {p.name: (p / "prefix.safetensors").read_bytes() for p in registry.iterdir()}
    assert set(after) == {*before, "src_count"} and all(after[k] == v for k, v in before.items())
    assert extract_main([*common, "--out", str(tmp_path / "three.safetensors")]) == 0
    two, three = load_file(tmp_path / "two.safetensors"), load_file(tmp_path / "three.safetensors")
    width = two["embeddings"].shape[1] // 2
    assert three["embeddings"].shape == (32, 3 * width)
    def names(path: Path) -> list[str]:
        with safe_open(path, "pt") as f:
            return json.loads(f.metadata()["prefixes"])

    order = names(tmp_path / "three.safetensors")
    old = [order.index(n) for n in names(tmp_path / "two.safetensors")]
    blocks = torch.cat([three["embeddings"][:, i * width:(i + 1) * width] for i in old], dim=1)
    torch.testing.assert_close(blocks, two["embeddings"])  # the old prefixes' blocks are unchanged


def test_report_command_end_to_end(tmp_path: Path, suite: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    assert report_main(["--manifest", str(suite), "--out", str(out), "--epochs", "1", "--head-epochs", "3"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["targets"]) == {"tgt_topic_neg", "tgt_marked_count", "tgt_living_count", "tgt_count_topic"}
    for row in results["targets"].values():
        assert set(row) == {"prefixes", "multitask", "frozen"}
        assert row["prefixes"]["dim"] == 4 * row["frozen"]["dim"]  # four source prefixes, concatenated
    assert results["targets"]["tgt_count_topic"]["frozen"]["metric"] == "pearson"
    cost = results["update_cost"]
    assert cost["task"] == "src_marked" and cost["parameter_ratio"] > 1
    assert sorted(p.name for p in (out / "registry").iterdir()) == ["src_count", "src_marked", "src_negation",
                                                                   "src_topic"]
    assert "| tgt_topic_neg | accuracy |" in (out / "report.md").read_text()
    assert report_main(["--manifest", str(tmp_path / "missing.json"), "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_extraction_sees_the_tokens_training_saw(suite: Path) -> None:
    """The datamodule's batches (what a prefix trains on) and the extractor tokenise a text the same way."""
    from datamodules.multitask import TextTaskDataModule
    from lightning_modules.prefix.module import PrefixTuning
    from lightning_modules.prefix.networks import extract

    model = PrefixTuning(task="src_topic", num_labels=5).eval()
    dm = TextTaskDataModule(manifest=str(suite), task="src_topic", tokenizer="tiny-bert", batch_size=4, shuffle=False)
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    texts = [json.loads(line)["text"] for line in (suite.parent / "src_topic" / "val.jsonl").read_text().splitlines()]
    with torch.no_grad():
        trained_view = model.embed(batch)  # (4, D)
    torch.testing.assert_close(extract(model.encoder, model.tokenizer, texts[:4], [model.prefix.materialize()]),
                               trained_view, atol=1e-5, rtol=0)


def test_wrong_number_of_labels_is_refused_before_training(tmp_path: Path, suite: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_main(["fit", "--config", str(REPO / "configs/prefix.yaml"), "--model.num_labels", "2",
                    "--data.manifest", str(suite), "--trainer.default_root_dir", str(tmp_path),
                    "--model.registry", str(tmp_path / "registry")])
    assert exit_info.value.code == 2
    assert "the data has 5 labels (1 = regression) but the model num_labels=2" in capsys.readouterr().err
    assert not (tmp_path / "registry").exists()


def test_multitask_encoder_trains_under_two_process_ddp(tmp_path: Path, suite: Path) -> None:
    """Each step trains one task's head: plain DDP must still see every parameter used (no unused-parameter error)."""
    import os
    import subprocess
    import sys

    args = [sys.executable, str(REPO / "train.py"), "fit", "--model", "MultiTaskEncoder",
            "--data", "MultiTaskDataModule",
            "--data.manifest", str(suite), "--data.roles", "[source]", "--data.batch_size", "8",
            "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
            "--trainer.max_steps", "4", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (ckpt,) = tmp_path.rglob("*.ckpt")
    model = MultiTaskEncoder.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    assert sorted(model.heads) == ["src_count", "src_marked", "src_negation", "src_topic"]
