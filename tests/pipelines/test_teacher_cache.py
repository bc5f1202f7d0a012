"""``lm-suite teacher-cache`` trains a missing teacher in its own process (``pipelines.train.main``), never by running
a script, then caches the teacher's outputs; the MSD module's own fallback runs ``python -m pipelines.train``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from safetensors.torch import load_file

import pipelines.train
from core.errors import ConfigError
from lightning_modules.msd import teacher as teacher_module
from lightning_modules.msd.classifier import MultimodalClassifier
from lightning_modules.msd.teacher import DISTRIBUTED_ENV, read_metadata, teacher_path
from pipelines.teacher_cache import main as cache_main

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[2]
SYN = ROOT / "data/multimodal/synthetic"
SIZE = 32


def rows(path: Path, n: int) -> Path:
    """The first ``n`` synthetic training rows, images by absolute path."""
    lines = [json.loads(line) for line in (SYN / "train.jsonl").read_text().splitlines()[:n]]
    for row in lines:
        row["img"] = str(SYN / row["img"])
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def recipe(root: Path, train: Path) -> Path:
    """A teacher trained for one step, exported to ``root/teacher``."""
    config = {
        "seed_everything": 0,
        "model": {"class_path": "lightning_modules.MultimodalClassifier", "init_args": {
            "image_backbone": "timm:test_resnet", "text_backbone": "tiny-bert", "image_size": SIZE,
            "fusion_hidden": 16}},
        "data": {"class_path": "datamodules.MultimodalDataModule", "init_args": {
            "train_file": str(train), "val_file": None, "image_size": SIZE, "batch_size": 8,
            "allow_outside_root": True}},  # the rows name the repo's images by absolute path
        "trainer": {"max_steps": 1, "accelerator": "cpu", "devices": 1, "logger": False,
                    "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(root / "teacher_run"),
                    "callbacks": [{"class_path": "callbacks.ExportModel",
                                   "init_args": {"dirpath": str(root / "teacher")}}]},
    }
    path = root / "teacher.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def no_subprocess(*args: Any, **kwargs: Any) -> None:
    raise AssertionError(f"a subprocess was started: {args}")


def test_cache_trains_a_missing_teacher_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train = rows(tmp_path / "train.jsonl", 16)
    calls: list[list[str]] = []
    real_main = pipelines.train.main

    def spy(args: list[str] | None = None, run: bool = True) -> Any:
        calls.append(list(args or []))
        return real_main(args, run=run)

    monkeypatch.setattr(pipelines.train, "main", spy)
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    made = cache_main(["--config", str(ROOT / "configs/msd.yaml"), "--model.teacher", str(tmp_path / "teacher"),
                       "--model.teacher_recipe", str(recipe(tmp_path, train)),
                       "--model.cache_dir", str(tmp_path / "cache"), "--model.image_size", str(SIZE),
                       "--data.image_size", str(SIZE), "--data.train_file", str(train), "--data.val_file", "null",
                       "--data.test_file", "null", "--data.allow_outside_root", "true"])
    assert calls == [["fit", "--config", str(tmp_path / "teacher.yaml")]]
    assert {p.name for p in (tmp_path / "teacher").iterdir()} == {"config.json", "model.safetensors",
                                                      "lm_suite_files.json"}  # + the export's manifest
    assert MultimodalClassifier.load(tmp_path / "teacher").hparams.image_size == SIZE
    assert made.parent == tmp_path / "cache" and load_file(made)["logits"].shape == (16, 3, 2)
    assert json.loads(read_metadata(made)["settings"])["image_size"] == SIZE


def test_a_failed_in_process_recipe_is_one_config_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"class_path": "lightning_modules.MultimodalClassifier"},
                                   "data": {"class_path": "datamodules.MultimodalDataModule",
                                            "init_args": {"train_file": str(tmp_path / "missing.jsonl")}}}))
    from pipelines.teacher_cache import train_recipe

    with pytest.raises(ConfigError, match=f"training the teacher with {bad} failed: exit status 2"):
        teacher_path(str(tmp_path / "teacher"), str(bad), train=train_recipe)
    assert "missing.jsonl" in capsys.readouterr().err  # the nested run's own one-line error


def test_without_a_train_function_the_recipe_runs_as_a_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The MSD module's path (maybe inside DDP): a fresh ``python -m pipelines.train`` process, no script path, none
    of the launcher's variables."""
    seen: dict[str, Any] = {}

    def fake_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        seen.update(cmd=cmd, env=kwargs["env"])
        return subprocess.CompletedProcess(cmd, 1, "", "error: boom")

    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_PORT", "12345")
    monkeypatch.setattr(teacher_module.subprocess, "run", fake_run)
    with pytest.raises(ConfigError, match="training the teacher with r.yaml failed: error: boom"):
        teacher_path(str(tmp_path / "teacher"), "r.yaml")
    assert seen["cmd"] == [sys.executable, "-m", "pipelines.train", "fit", "--config", "r.yaml"]
    assert not any(k in seen["env"] for k in DISTRIBUTED_ENV)
