"""A checkpoint, an exported folder or a hub id never runs code: only the person running the command turns on
``trust_remote_code`` (issue 15).

The bait is a local model folder whose ``config.json`` maps the Auto classes (``auto_map``) to a module of its own that
writes a marker file when imported. A checkpoint or an exported classifier folder is tampered to name that folder as
its backbone with ``trust_remote_code: true``; every loader must refuse it in one line that says how to allow it, and
the marker must never appear.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule

from core.backbones import TINY_TOKENIZER
from core.errors import ConfigError
from lightning_modules.msd.classifier import MultimodalClassifier
from pipelines.export import main as export_main
from pipelines.score_rewards import main as score_main
from pipelines.teacher_cache import main as cache_main
from train import main

ROOT = Path(__file__).resolve().parents[2]
SMALL = [
    "--data.synthetic_size", "16", "--data.batch_size", "8", "--data.max_length", "64",
    "--data.max_prompt_length", "32", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1",
]


def refusal(source: Path, how: str) -> str:
    return (f"error: {source} was saved with trust_remote_code: true, which would run Python code from its model's "
            f"folder or hub repo; a file cannot turn that on: pass {how} to allow it if you trust that code")


def bait(root: Path) -> tuple[Path, Path]:
    """A model folder whose own code (reached through ``config.json``'s ``auto_map``) writes ``marker`` on import.
    It holds the tiny tokenizer, so that a loader without remote code gets as far as the model's config."""
    folder, marker = root / "bait", root / "MARKER"
    folder.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY_TOKENIZER / name, folder / name)
    (folder / "config.json").write_text(json.dumps({"model_type": "bait", "auto_map": {
        "AutoConfig": "bait_code.BaitConfig", "AutoModel": "bait_code.BaitModel",
        "AutoModelForCausalLM": "bait_code.BaitModel", "AutoTokenizer": ["bait_code.BaitTokenizer", None]}}))
    (folder / "bait_code.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    return folder, marker


@pytest.fixture(scope="module")
def dpo_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real DPO checkpoint of the tiny preset, after one step."""
    root = tmp_path_factory.mktemp("dpo")
    main(["fit", "--model", "DPO", "--data", "PreferenceDataModule", *SMALL, "--trainer.default_root_dir", str(root),
          "--model.reference_cache_dir", str(root / "cache")])
    return next((root / "lightning_logs").rglob("*.ckpt"))


def tamper(ckpt: Path, out: Path, **hparams: object) -> Path:
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"].update(hparams)
    torch.save(checkpoint, out)
    return out


def error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


@pytest.fixture
def tampered(dpo_ckpt: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(checkpoint naming the bait with trust_remote_code: true, bait folder, marker)."""
    folder, marker = bait(tmp_path)
    ckpt = tamper(dpo_ckpt, tmp_path / "tampered.ckpt", backbone=f"hf:{folder}", trust_remote_code=True)
    return ckpt, folder, marker


# ------------------------------------------------------------------------------------- train.py --ckpt_path
@pytest.mark.parametrize("flag", [["--model.trust_remote_code", "false"], []], ids=["false-on-cli", "unset"])
def test_validate_refuses_a_checkpoint_that_turns_on_remote_code(
    tampered: tuple[Path, Path, Path], tmp_path: Path, flag: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, _, marker = tampered
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--config", str(ROOT / "configs/dpo.yaml"), *flag, "--ckpt_path", str(ckpt),
              "--trainer.default_root_dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert error_lines(capsys) == [refusal(ckpt, "--model.trust_remote_code true")]
    assert not marker.exists()


def test_the_command_line_is_what_turns_remote_code_on(tampered: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """The documented way: ``--model.trust_remote_code true`` with the checkpoint. The bait's code then runs (it
    defines no classes, so loading fails after)."""
    ckpt, _, marker = tampered
    with pytest.raises(Exception, match="BaitConfig|BaitModel|BaitTokenizer"):
        main(["validate", "--config", str(ROOT / "configs/dpo.yaml"), "--model.trust_remote_code", "true",
              "--ckpt_path", str(ckpt), "--trainer.default_root_dir", str(tmp_path / "run")])
    assert marker.read_text() == "ran"


def test_a_backbone_with_its_own_code_is_refused_in_one_line_without_opt_in(
    dpo_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Saved without trust_remote_code, a backbone with its own code is refused by the factory, in one line."""
    folder, marker = bait(tmp_path)
    ckpt = tamper(dpo_ckpt, tmp_path / "plain.ckpt", backbone=f"hf:{folder}", trust_remote_code=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--config", str(ROOT / "configs/dpo.yaml"), "--ckpt_path", str(ckpt),
              "--trainer.default_root_dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert error_lines(capsys) == [
        f"error: model 'hf:{folder}' needs its own Python code (auto_map), which runs only when you ask for it: pass "
        "--model.trust_remote_code true (or the command's trust-remote-code option) if you trust that code"]
    assert not marker.exists()


def test_a_checkpoint_cannot_make_validate_import_a_module(
    dpo_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checkpoint's ``_class_path`` only selects a class already imported: a module it names is never imported."""
    marker = tmp_path / "MARKER"
    (tmp_path / "bait_module.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ckpt = tamper(dpo_ckpt, tmp_path / "class.ckpt", _class_path="bait_module.Model")
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--config", str(ROOT / "configs/dpo.yaml"), "--ckpt_path", str(ckpt),
              "--trainer.default_root_dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert error_lines(capsys) == [
        f"error: {ckpt} names the model class 'bait_module.Model', which is no LightningModule this command has "
        "imported (a checkpoint does not make it import code): pass --model to choose the class"]
    assert not marker.exists()


# ------------------------------------------------------------------------------------- export, score-rewards
def test_export_refuses_a_checkpoint_that_turns_on_remote_code(
    tampered: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, _, marker = tampered
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--ckpt", str(ckpt), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert error_lines(capsys) == [refusal(ckpt, "--trust-remote-code")]
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_score_rewards_refuses_a_checkpoint_that_turns_on_remote_code(
    tampered: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, _, marker = tampered
    ckpt = tamper(ckpt, ckpt, _class_path="lightning_modules.CriticRM")
    out = tmp_path / "scored.jsonl"
    assert score_main(["--ckpt", str(ckpt), "--input", str(ROOT / "data/rewardbench_tiny.jsonl"), "--out",
                       str(out)]) == 2
    assert error_lines(capsys) == [refusal(ckpt, "--trust-remote-code")]
    assert not marker.exists() and not out.exists()


# ------------------------------------------------------------------------------------- MSD: classifier, teacher
@pytest.fixture
def tampered_export(tmp_path: Path) -> tuple[Path, Path]:
    """(an exported MultimodalClassifier folder naming the bait with trust_remote_code: true, marker)."""
    folder, marker = bait(tmp_path)
    model = MultimodalClassifier(image_backbone="timm:test_resnet", text_backbone="tiny-bert", num_labels=2,
                                 image_size=32, fusion_hidden=16)
    export = model.export(tmp_path / "teacher")
    config = json.loads((export / "config.json").read_text())
    config.update(text_backbone=f"hf:{folder}", trust_remote_code=True)
    (export / "config.json").write_text(json.dumps(config))
    return export, marker


def test_classifier_load_refuses_an_export_that_turns_on_remote_code(tampered_export: tuple[Path, Path]) -> None:
    export, marker = tampered_export
    with pytest.raises(ConfigError) as err:
        MultimodalClassifier.load(export)
    assert f"error: {err.value}" == refusal(export, "trust_remote_code=True")
    assert not marker.exists()


def msd_args(root: Path, teacher: Path) -> list[str]:
    return ["--config", str(ROOT / "configs/msd.yaml"), "--model.teacher", str(teacher), "--model.teacher_recipe",
            "null", "--model.cache_dir", str(root / "cache"), "--model.image_size", "32", "--data.image_size", "32",
            "--data.test_file", "null", "--trainer.default_root_dir", str(root / "run"), "--trainer.callbacks.dirpath",
            str(root / "student"), "--trainer.max_steps", "1", "--trainer.enable_progress_bar", "false"]


def test_msd_teacher_folder_cannot_turn_on_remote_code(
    tampered_export: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export, marker = tampered_export
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *msd_args(tmp_path, export)])
    assert exit_info.value.code == 2
    assert error_lines(capsys) == [refusal(export, "--model.trust_remote_code true")]
    with pytest.raises(ConfigError) as err:  # lm-suite teacher-cache loads the teacher the same way
        cache_main(msd_args(tmp_path, export))
    assert f"error: {err.value}" == refusal(export, "--model.trust_remote_code true")
    assert not marker.exists() and not (tmp_path / "student").exists()


# ------------------------------------------------------------------------------------- core.checkpointing
class Recorder(LightningModule):
    """Records the trust_remote_code its __init__ got; takes the rest through **kwargs, as MSD does."""

    def __init__(self, size: int = 1, **kwargs: object) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.got = kwargs.get("trust_remote_code")


@pytest.mark.parametrize("key", ["hyper_parameters", "hparams"])
def test_load_module_builds_with_the_callers_setting_only(tmp_path: Path, key: str) -> None:
    from core.checkpointing import load_module

    ckpt = tmp_path / "recorder.ckpt"
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6", key: {"size": 3, "trust_remote_code": True}},
               ckpt)
    with pytest.raises(ConfigError) as err:
        load_module(Recorder, ckpt)
    assert f"error: {err.value}" == refusal(ckpt, "--model.trust_remote_code true")
    allowed = load_module(Recorder, ckpt, trust_remote_code=True, how="--trust-remote-code")
    assert (allowed.got, allowed.hparams.size) == (True, 3)
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6", key: {"size": 3, "trust_remote_code": False}},
               ckpt)
    assert load_module(Recorder, ckpt, trust_remote_code=True).got is True  # the caller's, not the file's
    assert load_module(Recorder, ckpt).got is False
