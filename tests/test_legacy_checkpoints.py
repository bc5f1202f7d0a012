"""Checkpoints saved before the house plan (tests/fixtures/legacy, commit e19cfc5) load and validate as they did.

The metrics are the ones the old code printed for the same checkpoint and flags (tests/fixtures/legacy/README.md).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

from train import main

ROOT = Path(__file__).resolve().parents[1]
LEGACY = ROOT / "tests" / "fixtures" / "legacy"
SHORT = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
         "--trainer.enable_progress_bar", "false"]

CASES = {
    "dpo": (
        ["--config", "configs/dpo.yaml"],
        "lightning_modules.dpo.DPO",
        {"val/loss": 0.6871723532676697, "val/rewards/accuracies": 0.8125,
         "val/rewards/chosen": 0.014012574218213558, "val/rewards/rejected": 0.0019172909669578075,
         "val/rewards/margins": 0.012095284648239613, "val/logps/chosen": -73.13485717773438,
         "val/logps/rejected": -67.93479919433594},
    ),
    "prefix_tuning": (
        ["--config", "configs/prefix.yaml"],
        "lightning_modules.prefix_tuning.PrefixTuning",
        {"val/acc": 0.4375, "val/loss": 1.505616545677185},
    ),
    "multimodal_classifier": (
        ["--config", "configs/multimodal_teacher.yaml", "--model.image_backbone", "timm:test_efficientnet",
         "--model.image_size", "32", "--data.image_size", "32", "--model.fusion_hidden", "32"],
        "lightning_modules.multimodal.MultimodalClassifier",
        {"val/accuracy": 0.5625, "val/auroc": 0.5753968358039856, "val/f1_macro": 0.36000001430511475,
         "val/loss": 0.6856842637062073},
    ),
}


def validate(args: list[str], ckpt: Path, root: Path) -> dict[str, float]:
    cli = main(["validate", *args, *SHORT, "--trainer.default_root_dir", str(root), "--ckpt_path", str(ckpt)])
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_checkpoint_from_before_the_move_validates_as_before(name: str, tmp_path: Path, monkeypatch,
                                                               one_thread: None) -> None:
    monkeypatch.chdir(ROOT)  # the configs' data paths are relative to the repository
    args, old_path, expected = CASES[name]
    got = validate(args, LEGACY / f"{name}.ckpt", tmp_path / "short")
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-7)

    # The same checkpoint naming its class by the old defining module (a config or checkpoint of older releases).
    ckpt = torch.load(LEGACY / f"{name}.ckpt", map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["_class_path"] = old_path
    moved = tmp_path / "old_path.ckpt"
    torch.save(ckpt, moved)
    sys.modules.pop(old_path.rpartition(".")[0], None)  # imported by an earlier test: it warns on its first import
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = validate(args, moved, tmp_path / "old")
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-7)
    if old_path != "lightning_modules.dpo.DPO":  # lightning_modules.dpo is a package now: no alias, no warning
        assert any("moved to" in str(w.message) for w in caught if issubclass(w.category, FutureWarning))
