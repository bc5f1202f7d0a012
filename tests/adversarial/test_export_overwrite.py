"""Issue 15, defect 3: an export never deletes what the suite did not write.

``lm-suite export --out`` and ``callbacks.ExportModel`` used to ``rmtree`` any existing folder. Now a folder that is
neither new, empty nor a previous export (no ``core.io.MANIFEST``) is refused in one line (exit 2) before any work,
unless ``--overwrite`` / ``ExportModel(overwrite=True)``, and even then only the files the export writes are replaced.
A re-export over a previous export needs no flag: it replaces the files the previous one listed and keeps the rest.
A read-only or impossible output place is one ``error:`` line too, not an OS traceback.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from callbacks.export_model import ExportModel
from core.errors import ConfigError
from core.io import MANIFEST, atomic_write_text
from datamodules.multitask_synthetic import write_suite
from datamodules.sft import SFTDataModule
from lightning_modules.dpo import SFT
from lightning_modules.msd.classifier import MultimodalClassifier
from pipelines.cli import main as lm_suite
from pipelines.export import main as export_main

pytestmark = pytest.mark.usefixtures("one_thread")

HF_FILES = {"config.json", "generation_config.json", "model.safetensors"}  # and the tokenizer's files
CLASSIFIER_FILES = {"config.json", "model.safetensors", MANIFEST}


def quiet_trainer(root: Path, **kwargs: object) -> Trainer:
    return Trainer(accelerator="cpu", limit_val_batches=0, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root), **kwargs)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SFT checkpoint of tiny-llama after one step (about 2 s)."""
    root = tmp_path_factory.mktemp("ckpt")
    rows = root / "sft.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"Say {w}.", "response": w}) + "\n" for w in ("apple", "pear")))
    torch.set_num_threads(1)
    model = SFT(backbone="tiny-llama", lr=1e-2)
    trainer = quiet_trainer(root, max_steps=1)
    trainer.fit(model, datamodule=SFTDataModule(train_files=str(rows), batch_size=2))
    trainer.save_checkpoint(root / "sft.ckpt")
    return root / "sft.ckpt"


def user_folder(path: Path, **files: str) -> Path:
    path.mkdir(parents=True)
    for name, text in (files or {"notes.txt": "my notes\n"}).items():
        (path / name).write_text(text)
    return path


def one_error_line(capsys: pytest.CaptureFixture, argv: list[str], via_lm_suite: bool = False) -> str:
    with pytest.raises(SystemExit) as info:
        lm_suite(["export", *argv]) if via_lm_suite else export_main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err.strip()


def listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def no_temporaries(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------------------ lm-suite export
@pytest.mark.parametrize("via_lm_suite", [False, True], ids=["export-main", "lm-suite"])
def test_export_refuses_a_folder_it_did_not_write_and_keeps_it(ckpt: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture,
                                                                 via_lm_suite: bool) -> None:
    out = user_folder(tmp_path / "mine", **{"notes.txt": "my notes\n", "config.json": "{\"mine\": 1}\n"})
    before = listing(out)
    err = one_error_line(capsys, ["--ckpt", str(ckpt), "--out", str(out)], via_lm_suite)
    assert err == (f"error: {out} is a non-empty folder that lm-suite did not write (no {MANIFEST}): export into a "
                   "new or empty folder, or pass --overwrite to replace only the files the export writes")
    assert listing(out) == before
    no_temporaries(tmp_path)


def test_overwrite_replaces_only_the_exported_files(ckpt: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = user_folder(tmp_path / "mine", **{"notes.txt": "my notes\n", "config.json": "{\"mine\": 1}\n"})
    (out / "sub").mkdir()
    (out / "sub" / "data.bin").write_bytes(b"\x00\x01")
    export_main(["--ckpt", str(ckpt), "--out", str(out), "--overwrite"])
    written = set(manifest(out)["files"])
    assert HF_FILES <= written and "notes.txt" not in written and manifest(out)["written_by"] == "lm-suite"
    assert set(listing(out)) == written | {MANIFEST, "notes.txt", "sub/data.bin"}
    assert (out / "notes.txt").read_text() == "my notes\n" and (out / "sub" / "data.bin").read_bytes() == b"\x00\x01"
    assert json.loads((out / "config.json").read_text()) != {"mine": 1}  # a file the export writes: replaced
    AutoModelForCausalLM.from_pretrained(out)  # the extra files do not disturb loading
    no_temporaries(tmp_path)


def test_reexport_over_a_previous_export_needs_no_flag_and_keeps_added_files(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "nested" / "exported"  # missing parents are created
    export_main(["--ckpt", str(ckpt), "--out", str(out)])
    first = listing(out)
    assert set(first) == set(manifest(out)["files"]) | {MANIFEST}
    # a previous export only the suite wrote: swapped whole, identical content
    export_main(["--ckpt", str(ckpt), "--out", str(out)])
    assert listing(out) == first
    # the user adds a file, and an older export had a file this one no longer writes (listed in its manifest)
    (out / "README.md").write_text("my model card\n")
    (out / "model-00002-of-00002.safetensors").write_bytes(b"stale")
    old = manifest(out)
    (out / MANIFEST).write_text(json.dumps({**old, "files": [*old["files"], "model-00002-of-00002.safetensors"]}))
    export_main(["--ckpt", str(ckpt), "--out", str(out)])
    assert listing(out) == {**first, "README.md": b"my model card\n"}  # the stale file is gone, the user's stays
    no_temporaries(out.parent)


def test_export_into_a_file_or_under_a_file_is_one_line(ckpt: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("keep\n")
    err = one_error_line(capsys, ["--ckpt", str(ckpt), "--out", str(a_file), "--overwrite"])
    assert err.startswith(f"error: {a_file} is a file, not a folder")
    err = one_error_line(capsys, ["--ckpt", str(ckpt), "--out", str(a_file / "out")])
    assert err == f"error: cannot create the folder of {a_file / 'out'}: {a_file} is a file"
    assert a_file.read_text() == "keep\n"


@pytest.fixture
def read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder nothing can be written into: chmod 555, or for root (whom permissions do not stop) ``os.mkdir``
    failing with EACCES inside it, as it does for a user on a read-only folder."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
    else:
        real_mkdir = os.mkdir

        def mkdir(path: object, *args: object, **kwargs: object) -> None:
            if Path(os.fsdecode(path)).resolve().parent == folder.resolve():  # type: ignore[arg-type]
                raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))  # type: ignore[arg-type]
            real_mkdir(path, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "mkdir", mkdir)
    yield folder
    folder.chmod(0o755)


def test_read_only_output_folder_is_one_line(ckpt: Path, read_only: Path, capsys: pytest.CaptureFixture) -> None:
    err = one_error_line(capsys, ["--ckpt", str(ckpt), "--out", str(read_only / "exported")])
    assert err == f"error: cannot write into {read_only}: Permission denied"
    clf = MultimodalClassifier(image_backbone="timm:test_resnet", fusion_hidden=32, num_labels=2)
    with pytest.raises(ConfigError, match=f"^cannot write into {read_only}: Permission denied$"):
        clf.export(read_only / "clf")
    assert list(read_only.iterdir()) == []


# ------------------------------------------------------------------------------------ ExportModel callback
class Tiny(LightningModule):
    """A one-layer module whose ``export`` is a real classifier's (MultimodalClassifier.export)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.steps = 0
        self.classifier = [MultimodalClassifier(image_backbone="timm:test_resnet", fusion_hidden=32, num_labels=2)]

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.steps += 1
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.layer.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)

    def export(self, folder: Path, **kwargs: bool) -> Path:
        return self.classifier[0].export(folder, **kwargs)


def fit(root: Path, callback: ExportModel) -> Tiny:
    model = Tiny()
    quiet_trainer(root, max_steps=1, callbacks=[callback]).fit(model)
    return model


def test_export_model_refuses_a_user_folder_before_training(tmp_path: Path) -> None:
    out = user_folder(tmp_path / "mine")
    model = Tiny()
    with pytest.raises(ConfigError) as info:
        quiet_trainer(tmp_path, max_steps=1, callbacks=[ExportModel(dirpath=str(out))]).fit(model)
    assert str(info.value) == (f"ExportModel: {out} is a non-empty folder that lm-suite did not write (no {MANIFEST}): "
                               "choose a new or empty folder, or set ExportModel's overwrite to replace only the "
                               "files the export writes")
    assert model.steps == 0  # refused at setup, before any training
    assert listing(out) == {"notes.txt": b"my notes\n"}


def test_export_model_overwrite_keeps_user_files_and_reexport_needs_no_flag(tmp_path: Path) -> None:
    out = user_folder(tmp_path / "mine", **{"notes.txt": "my notes\n", "model.safetensors": "mine"})
    assert fit(tmp_path, ExportModel(dirpath=str(out), overwrite=True)).steps == 1
    assert set(listing(out)) == CLASSIFIER_FILES | {"notes.txt"}
    assert manifest(out) == {"written_by": "lm-suite", "files": ["config.json", "model.safetensors"]}
    assert (out / "notes.txt").read_text() == "my notes\n" and (out / "model.safetensors").read_bytes() != b"mine"
    MultimodalClassifier.load(out)
    assert fit(tmp_path, ExportModel(dirpath=str(out))).steps == 1  # a previous export: no flag needed
    assert set(listing(out)) == CLASSIFIER_FILES | {"notes.txt"} and (out / "notes.txt").read_text() == "my notes\n"
    fresh = tmp_path / "fresh"
    fit(tmp_path, ExportModel(dirpath=str(fresh)))
    assert set(listing(fresh)) == CLASSIFIER_FILES
    no_temporaries(tmp_path)


# ------------------------------------------------------------------ other folder writers (same class of defect)
def test_data_generator_refuses_a_folder_with_other_files(tmp_path: Path) -> None:
    """``lm-suite data multitask --out`` (no manifest: its folders are compared with the shipped data) replaces a
    previous suite whole, but refuses a folder holding files it does not write, instead of wiping them."""
    out = tmp_path / "suite"
    write_suite(out, n_train=4, n_val=2, n_test=2, seed=0)
    first = listing(out)
    write_suite(out, n_train=4, n_val=2, n_test=2, seed=1)  # regenerate: replaced whole
    assert set(listing(out)) == set(first) and listing(out) != first
    (out / "notes.txt").write_text("my notes\n")
    with pytest.raises(ConfigError, match="non-empty folder that lm-suite did not write"):
        write_suite(out, n_train=4, n_val=2, n_test=2, seed=0)
    assert (out / "notes.txt").read_text() == "my notes\n" and set(listing(out)) == set(first) | {"notes.txt"}
    no_temporaries(tmp_path)


def test_atomic_file_write_over_a_folder_is_one_line(tmp_path: Path) -> None:
    folder = user_folder(tmp_path / "out.json")
    with pytest.raises(ConfigError, match=f"^{folder} is a non-empty folder|^{folder} is a folder"):
        atomic_write_text(folder, "{}\n")
    (folder / "notes.txt").unlink()
    with pytest.raises(ConfigError, match=f"^{folder} is a folder: cannot write a file there$"):
        atomic_write_text(folder, "{}\n")
    assert folder.is_dir()
