"""Mid-epoch resume is exact for every LightningModule of the suite, through train.py, with the shipped configs.

Each case trains 2 epochs of 3 batches (``max_epochs`` set, so a schedule's length comes from the training loader)
uninterrupted, saving a checkpoint after step 4 (mid-way through the second epoch); a second run resumes from that
checkpoint to the end. Every parameter and buffer must then be bit-identical (CPU, ``--trainer.deterministic``).
Where the module has one, the LR schedule is linear or cosine after a one-step warm-up, so it needs the step count.

Lightning restores a training loader's position only into a loader it builds after the checkpoint's loops are
restored: reading ``trainer.estimated_stepping_batches`` in ``configure_optimizers`` (or ``on_fit_start``) used to
build it earlier, and the resumed epoch restarted at batch 0. The multitask sampler also drew its epoch's order
before Lightning's ``set_epoch``, so it resumed the second epoch in the first one's order.

Lightning does not checkpoint the random generators, so dropout is 0 here: the encoder presets' (tiny-bert) and the
heads' (``--model.dropout 0``). The configs' callbacks are replaced by the one checkpoint (they write into runs/ and
do not touch the weights); a registry or cache folder moves under tmp_path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from module_cases import CASES, COMMON, ROOT, case_args

from train import main

STOP = 4  # checkpoint after this step: epoch 1, batch 1 of 3

pytestmark = pytest.mark.usefixtures("one_thread")

def fit(args: list[str], root: Path, callbacks: list[dict], *extra: str):
    return main(["fit", *args, *COMMON, "--trainer.default_root_dir", str(root),
                 "--trainer.callbacks", json.dumps(callbacks), *extra])


@pytest.mark.parametrize("name", list(CASES))
def test_mid_epoch_resume_is_exact(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   no_dropout: None) -> None:
    monkeypatch.chdir(ROOT)  # the configs' data paths are relative to the repository
    args = case_args(name, tmp_path)
    checkpoint = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(tmp_path / "ck"), "filename": "{step}", "every_n_train_steps": STOP,
                                "save_top_k": -1}}
    full = fit(args, tmp_path / "full", [checkpoint])
    assert full.trainer.global_step == 6
    resumed = fit(args, tmp_path / "resumed", [], "--trainer.enable_checkpointing", "false",
                  "--ckpt_path", str(tmp_path / "ck" / f"step={STOP}.ckpt"))
    assert resumed.trainer.global_step == 6
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{name}: {len(differ)} of {len(a)} tensors differ after resuming, e.g. {differ[:3]}"
