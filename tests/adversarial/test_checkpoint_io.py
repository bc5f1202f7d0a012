"""Checkpoints are written under a temporary name and renamed: a failed write never truncates the real file."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from core.checkpointing import AtomicCheckpointIO
from train import main

ROOT = Path(__file__).resolve().parents[2]


def test_a_failed_write_leaves_the_previous_checkpoint_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "ckpt" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.arange(4.0)}, target)
    before = target.read_bytes()
    real_save = torch.save

    def disk_full(obj: object, f: object, *args: object, **kwargs: object) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")  # what reached the disk before it filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(4)}, target)
    monkeypatch.setattr(torch, "save", real_save)
    assert target.read_bytes() == before  # the previous checkpoint, byte for byte
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temporary left behind
    assert torch.load(target, weights_only=True)["step"] == 1


def test_training_writes_checkpoints_through_the_atomic_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               one_thread: None) -> None:
    monkeypatch.chdir(ROOT)
    cli = main(["fit", "--config", "configs/dpo.yaml", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1",
                "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
                "--trainer.callbacks", "[]", "--trainer.logger", "false"])
    assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    last = tmp_path / "checkpoints"
    saved = list(last.glob("*.ckpt"))
    assert saved and not list(last.glob(".*.tmp"))
    assert torch.load(saved[0], map_location="cpu", weights_only=True)["global_step"] == 1


def test_a_truncated_checkpoint_is_one_line_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(ROOT)
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes((ROOT / "tests/fixtures/legacy/dpo.ckpt").read_bytes()[:5000])
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--config", "configs/dpo.yaml", "--ckpt_path", str(bad),
              "--trainer.default_root_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot read {bad} as a checkpoint: ")


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(ROOT)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/dpo.yaml", "--trainer.default_root_dir", str(blocker / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: cannot write into the folder {blocker / 'run'}: Not a directory"]
