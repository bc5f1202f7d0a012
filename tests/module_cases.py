"""Every LightningModule of the suite as a ``train.py`` argument list on small slices of the committed data: the
cases the resume tests (``tests/adversarial/test_resume.py``) and the sharded tests (``tests/sharded``) run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lightning_modules.msd.classifier import MultimodalClassifier

ROOT = Path(__file__).resolve().parents[1]

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


def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested checkpoint (dicts, lists) as ``{"a.b.0.c": leaf}``: to compare two checkpoints entry by entry."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list | tuple):
        return {k: v for i, sub in enumerate(tree) for k, v in flat(sub, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): tree}
