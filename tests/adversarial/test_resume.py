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
from safetensors.torch import save_file

from core import backbones
from lightning_modules.msd.classifier import MultimodalClassifier
from train import main

ROOT = Path(__file__).resolve().parents[2]
STOP = 4  # checkpoint after this step: epoch 1, batch 1 of 3

pytestmark = pytest.mark.usefixtures("one_thread")

COMMON = [
    "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
    "--trainer.num_sanity_val_steps", "0", "--trainer.deterministic", "true", "--trainer.accelerator", "cpu",
    "--trainer.devices", "1", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1",
]
SCHEDULE = ["--model.warmup_steps", "1", "--model.lr_schedule"]
MULTIMODAL = ["--model.image_size", "48", "--data.image_size", "48", "--model.dropout", "0",
              "--data.batch_size", "4", "--data.test_file", "null"]


def config(name: str) -> list[str]:
    return ["--config", str(ROOT / "configs" / name)]


CASES: dict[str, list[str]] = {
    "dpo": [*config("dpo.yaml"), *SCHEDULE, "linear", "--data.batch_size", "4", "--data.max_length", "96"],
    "sft": ["--model", "SFT", "--data", "SFTDataModule", "--data.response_field", "chosen", "--data.batch_size", "4",
            "--data.max_length", "96", "--data.max_prompt_length", "48", *SCHEDULE, "cosine", "--seed_everything", "0"],
    "critic_rm": [*config("critic_rm.yaml"), *SCHEDULE, "linear", "--data.batch_size", "4"],
    "prefix": [*config("prefix.yaml"), "--data.batch_size", "8"],  # PrefixTuning has a constant LR
    # constant: holds the task-balanced sampler's own resume (its epoch order) apart from the schedule's
    "multitask": ["--model", "MultiTaskEncoder", "--data", "MultiTaskDataModule", "--data.manifest",
                  "data/multitask/tasks.json", "--data.roles", "[source]", "--data.batch_size", "8",
                  "--model.backbone", "tiny-bert", "--seed_everything", "0"],
    "downstream": ["--model", "DownstreamHead", "--data", "RepresentationDataModule", "--model.head", "mlp",
                   "--model.hidden", "16", "--model.dropout", "0", "--data.batch_size", "8", *SCHEDULE, "cosine",
                   "--seed_everything", "0"],
    "unirex": [*config("unirex.yaml"), *SCHEDULE, "linear", "--model.dropout", "0", "--data.batch_size", "4"],
    "multimodal_teacher": [*config("multimodal_teacher.yaml"), *SCHEDULE, "linear", *MULTIMODAL],
    "msd": [*config("msd.yaml"), *SCHEDULE, "cosine", *MULTIMODAL, "--model.image_backbone", "timm:test_vit"],
}


@pytest.fixture
def no_dropout(monkeypatch: pytest.MonkeyPatch) -> None:
    kind, kwargs = backbones.PRESETS["tiny-bert"]
    monkeypatch.setitem(backbones.PRESETS, "tiny-bert",
                        (kind, {**kwargs, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}))


# data option -> (file, rows kept): the first rows of the committed files, enough for 3 batches of 4 or 8
FILES = {
    "dpo": {"train_files": ("data/tiny/train.jsonl", 24), "val_files": ("data/tiny/val.jsonl", 4)},
    "sft": {"train_files": ("data/tiny/train.jsonl", 24), "val_files": ("data/tiny/val.jsonl", 4)},
    "critic_rm": {"train_files": ("data/critic/train.jsonl", 24), "val_files": ("data/critic/val.jsonl", 4)},
    "unirex": {"train_files": ("data/rationale/synthetic/train.jsonl", 24),
               "val_files": ("data/rationale/synthetic/val.jsonl", 4), "test_files": None},
    "multimodal_teacher": {"train_file": ("data/multimodal/synthetic/train.jsonl", 24),
                           "val_file": ("data/multimodal/synthetic/val.jsonl", 4)},
}
FILES["msd"] = FILES["multimodal_teacher"]


def head(src: str, dst: Path, rows: int) -> str:
    dst.write_text("".join((ROOT / src).read_text(encoding="utf-8").splitlines(keepends=True)[:rows]))
    return str(dst)


def case_args(name: str, tmp_path: Path) -> list[str]:
    args = list(CASES[name])
    for option, spec in FILES.get(name, {}).items():
        args += [f"--data.{option}", "null" if spec is None else head(spec[0], tmp_path / f"{option}.jsonl", spec[1])]
    if name in ("multimodal_teacher", "msd"):
        args += ["--data.image_dir", str(ROOT / "data/multimodal/synthetic")]
    if name == "prefix":
        args += ["--model.registry", "null"]
    if name == "downstream":
        g = torch.Generator().manual_seed(0)
        for split, n in (("train", 48), ("val", 8)):
            x = torch.randn(n, 6, generator=g)
            save_file({"embeddings": x, "labels": (x[:, 0] > 0).long()}, str(tmp_path / f"{split}.safetensors"))
        args += ["--data.train_file", str(tmp_path / "train.safetensors"),
                 "--data.val_file", str(tmp_path / "val.safetensors")]
    if name == "msd":  # an untrained teacher is enough: the student's loss still depends on its outputs
        teacher = MultimodalClassifier(image_backbone="timm:test_resnet", text_backbone="tiny-bert", image_size=48,
                                       num_labels=2, label_names=["0", "1"], dropout=0.0)
        teacher.export(tmp_path / "teacher")
        args += ["--model.teacher", str(tmp_path / "teacher"), "--model.cache_dir", str(tmp_path / "cache")]
    return args


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
