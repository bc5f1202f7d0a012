"""``lm-suite export`` knows a checkpoint's module from the checkpoint (``module_class``, else LightningCLI's
``_class_path``) or from ``--module``, resolved through an allow-list; bad input is one ``error:`` line, exit 2."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer

from core.checkpointing import MODULE_CLASS_KEY
from datamodules.preference import PreferenceDataModule
from datamodules.sft import SFTDataModule
from lightning_modules.critic_rm import CriticRM
from lightning_modules.dpo import DPO, SFT
from pipelines.export import BY_PATH, EXPORTABLE, exportable_class, main, module_name

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = {"DPO": DPO, "SFT": SFT, "CriticRM": CriticRM}


def fit_one_step(model: LightningModule, data: Any, path: Path) -> Path:
    """A plain Trainer (no LightningCLI, as pipelines/instruction_following/job.py trains): one step, saved."""
    trainer = Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(path.parent))
    trainer.fit(model, datamodule=data)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, LightningModule]]:
    root = tmp_path_factory.mktemp("ckpts")
    dpo = DPO(backbone="tiny-llama", lr=1e-2)
    data = PreferenceDataModule(synthetic_size=16, batch_size=8, max_length=96, max_prompt_length=48)
    sft_rows = root / "sft.jsonl"
    sft_rows.write_text("".join(json.dumps({"prompt": f"Say {w}.", "response": w}) + "\n"
                                for w in ("apple", "pear", "plum", "fig")))
    sft = SFT(backbone="tiny-llama", lr=1e-2)
    return {"DPO": (fit_one_step(dpo, data, root / "dpo.ckpt"), dpo),
            "SFT": (fit_one_step(sft, SFTDataModule(train_files=str(sft_rows), batch_size=4), root / "sft.ckpt"), sft)}


def rewrite(src: Path, dst: Path, module_class: str | None = None, class_path: str | None = None) -> Path:
    """``src`` with its ``module_class`` and hyperparameter ``_class_path`` replaced (None: removed)."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    ckpt.pop(MODULE_CLASS_KEY, None)
    ckpt["hyper_parameters"].pop("_class_path", None)
    if module_class is not None:
        ckpt[MODULE_CLASS_KEY] = module_class
    if class_path is not None:
        ckpt["hyper_parameters"]["_class_path"] = class_path
    torch.save(ckpt, dst)
    return dst


def one_error_line(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize("name", ["DPO", "SFT"])
def test_plain_trainer_checkpoint_exports_as_its_class(ckpts: dict, name: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    from transformers import AutoModelForCausalLM

    ckpt, model = ckpts[name]
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert "_class_path" not in saved["hyper_parameters"]  # no LightningCLI: the module's own record tells
    assert saved[MODULE_CLASS_KEY] == f"lightning_modules.dpo.{'module' if name == 'DPO' else 'sft'}.{name}"
    assert module_name(ckpt) == name
    out = main(["--ckpt", str(ckpt), "--out", str(tmp_path / "hf")])
    assert f"({name}) -> {out}" in capsys.readouterr().out
    exported = AutoModelForCausalLM.from_pretrained(out).state_dict()
    trained = model.policy.state_dict()
    assert exported.keys() == trained.keys()
    for k, v in trained.items():
        torch.testing.assert_close(exported[k], v, rtol=0, atol=0, msg=k)


@pytest.mark.parametrize(("path", "name"), sorted(BY_PATH.items()))
def test_lightning_cli_class_path_is_read_when_module_class_is_missing(ckpts: dict, path: str, name: str,
                                                                         tmp_path: Path) -> None:
    """Every accepted import path (LightningCLI's shortest, the defining module's, the pre-house-plan modules') is
    that class, and a checkpoint naming its class only by it resolves to it."""
    module, _, attr = path.rpartition(".")
    assert getattr(importlib.import_module(module), attr) is CLASSES[name] is exportable_class(name)
    ckpt = rewrite(ckpts["DPO"][0], tmp_path / "cli.ckpt", class_path=path)
    assert module_name(ckpt) == name
    assert set(EXPORTABLE) == set(CLASSES)


def test_module_class_wins_over_class_path(ckpts: dict, tmp_path: Path) -> None:
    ckpt = rewrite(ckpts["SFT"][0], tmp_path / "both.ckpt", module_class="lightning_modules.dpo.sft.SFT",
                   class_path="lightning_modules.DPO")
    assert module_name(ckpt) == "SFT"


def test_a_checkpoint_without_markers_needs_module(ckpts: dict, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    ckpt = rewrite(ckpts["DPO"][0], tmp_path / "bare.ckpt")
    err = one_error_line(capsys, ["--ckpt", str(ckpt), "--out", str(tmp_path / "hf")])
    assert str(ckpt) in err and "--module" in err
    assert not (tmp_path / "hf").exists()
    out = main(["--ckpt", str(ckpt), "--out", str(tmp_path / "hf"), "--module", "DPO"])
    assert "(DPO)" in capsys.readouterr().out and (out / "model.safetensors").is_file()


def test_module_overrides_what_the_checkpoint_records(ckpts: dict, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    wrong = rewrite(ckpts["SFT"][0], tmp_path / "wrong.ckpt", module_class="lightning_modules.dpo.module.DPO")
    assert module_name(wrong, "SFT") == "SFT"
    main(["--ckpt", str(wrong), "--out", str(tmp_path / "hf"), "--module", "SFT"])
    assert "(SFT)" in capsys.readouterr().out
    # A class export does not write is never imported: an error without --module, overridden with it.
    alien = rewrite(ckpts["SFT"][0], tmp_path / "alien.ckpt", module_class="os.system")
    err = one_error_line(capsys, ["--ckpt", str(alien), "--out", str(tmp_path / "alien")])
    assert "os.system" in err and "--module" in err and str(alien) in err
    assert module_name(alien, "SFT") == "SFT"
    # A --module whose state dict is not the checkpoint's: one line too.
    err = one_error_line(capsys, ["--ckpt", str(wrong), "--out", str(tmp_path / "rm"), "--module", "CriticRM"])
    assert "does not load as CriticRM" in err


def test_missing_and_unreadable_files_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = ["--out", str(tmp_path / "hf")]
    assert f"no checkpoint at {tmp_path / 'none.ckpt'}" in one_error_line(
        capsys, ["--ckpt", str(tmp_path / "none.ckpt"), *out])
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    assert f"cannot read {garbage}" in one_error_line(capsys, ["--ckpt", str(garbage), *out, "--module", "SFT"])
    tensor = tmp_path / "tensor.ckpt"
    torch.save(torch.zeros(2), tensor)
    assert "no Lightning checkpoint" in one_error_line(capsys, ["--ckpt", str(tensor), *out])
    assert not (tmp_path / "hf").exists()
