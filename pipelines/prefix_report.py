"""Report: prefix-combined fixed representations vs multi-task fine-tuning vs the frozen encoder, per target task.

Huang et al. 2023 (Findings of EMNLP), "Learning Easily Updated General Purpose Text Representations with Adaptable
Task-Specific Prefixes". From a ``tasks.json`` manifest (``lm-suite data multitask``, or your own
with the same keys), this command:

1. trains one prefix per source task on the frozen encoder (:class:`~lightning_modules.prefix.module.PrefixTuning`),
   saving each to the registry ``<out>/registry``; the last source task plays "the task added later", so its
   wall time and trainable parameters are the cost of an update;
2. fine-tunes the encoder on all source tasks at once (:class:`~lightning_modules.prefix.multitask.MultiTaskEncoder`,
   task-balanced batches) and exports it to ``<out>/multitask_encoder``: the cost of an update on that path;
3. for each target task, extracts three fixed representations of its train/val/test texts: all prefixes combined
   (one batched pass), the multi-task encoder's, and the frozen encoder's without prefix; trains the same downstream
   head (:class:`~lightning_modules.prefix.heads.DownstreamHead`) on each and reports its test metric (accuracy for
   classification, Pearson r for regression);
4. writes ``<out>/report.md`` and ``<out>/results.json`` atomically, and prints the table.

    lm-suite prefix report --manifest data/multitask/tasks.json --out runs/prefix_report
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer, seed_everything

from core.backbones import UnknownModelError, build_encoder, load_tokenizer
from core.errors import ConfigError, DataError
from core.io import atomic_write_text
from datamodules.multitask import MultiTaskDataModule, TaskSpec, TextTaskDataModule, manifest_tasks
from datamodules.representations import RepresentationDataModule
from lightning_modules.prefix.heads import DownstreamHead
from lightning_modules.prefix.module import PrefixTuning
from lightning_modules.prefix.multitask import MultiTaskEncoder
from lightning_modules.prefix.networks import extract
from lightning_modules.prefix.registry import load_prefix
from pipelines.prefix_extract import read_inputs, write_output

SPLITS = ("train", "val", "test")


def _trainer(epochs: int) -> Trainer:
    return Trainer(accelerator="auto", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


def _trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def train_prefix(args: argparse.Namespace, task: str, registry: Path) -> dict[str, Any]:
    """One source task's prefix, saved to ``registry``: wall time, trainable parameters, validation metrics."""
    seed_everything(args.seed)
    dm = TextTaskDataModule(manifest=args.manifest, task=task, tokenizer=args.backbone, batch_size=args.batch_size)
    dm.setup()
    model = PrefixTuning(backbone=args.backbone, task=task, num_labels=dm.num_labels, prefix_length=args.prefix_length,
                         pooling=args.pooling, lr=args.prefix_lr, registry=str(registry), init_seed=args.seed)
    trainer = _trainer(args.epochs)
    start = time.perf_counter()
    trainer.fit(model, dm)
    seconds = time.perf_counter() - start
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    return {"seconds": seconds, "trainable_parameters": _trainable(model), "val": metrics}


def train_multitask(args: argparse.Namespace, out: Path) -> tuple[MultiTaskEncoder, dict[str, Any]]:
    seed_everything(args.seed)
    dm = MultiTaskDataModule(manifest=args.manifest, roles=["source"], tokenizer=args.backbone,
                             batch_size=args.batch_size)
    model = MultiTaskEncoder(backbone=args.backbone, pooling=args.pooling, lr=args.multitask_lr, init_seed=args.seed)
    trainer = _trainer(args.epochs)
    start = time.perf_counter()
    trainer.fit(model, dm)
    seconds = time.perf_counter() - start
    model.export_pretrained(out)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    return model, {"seconds": seconds, "trainable_parameters": _trainable(model), "val": metrics, "folder": str(out)}


def _texts_and_labels(spec: TaskSpec, split: str) -> tuple[list[Any], torch.Tensor]:
    """A split's texts (or pairs) and labels, read and checked as the extraction CLI reads them (file:line errors)."""
    records = spec.records(split)
    if not records:
        raise DataError(f"target task {spec.name!r} has no {split} split")
    texts, labels = read_inputs(records, spec.text_field, spec.text_pair_field, spec.label_field)
    return texts, labels.float() if spec.task_type == "regression" else labels


def evaluate_target(args: argparse.Namespace, spec: TaskSpec, views: dict[str, tuple], folder: Path) -> dict[str, Any]:
    """Per representation: extract every split, train the downstream head, return its test metrics."""
    out: dict[str, Any] = {}
    data = {s: _texts_and_labels(spec, s) for s in SPLITS}
    for view, (encoder, tokenizer, prefixes) in views.items():
        files = {}
        start = time.perf_counter()
        for split, (texts, labels) in data.items():
            x = extract(encoder, tokenizer, texts, prefixes, pooling=args.pooling, combine=args.combine,
                        batch_size=args.batch_size)  # (N, D)
            files[split] = folder / f"{spec.name}.{view}.{split}.safetensors"
            meta = {"format": "prefix-embeddings/1", "view": view, "dim": str(x.shape[1])}
            write_output(files[split], x, labels, meta)
        extract_s = time.perf_counter() - start
        seed_everything(args.seed)
        dm = RepresentationDataModule(train_file=str(files["train"]), val_file=str(files["val"]),
                                      test_file=str(files["test"]), task_type=spec.task_type, standardize=True,
                                      check_metadata=False)
        head = DownstreamHead(head=args.head, lr=args.head_lr)
        trainer = _trainer(args.head_epochs)
        trainer.fit(head, dm)
        (test,) = trainer.test(head, dm, verbose=False)
        key = "test/accuracy" if spec.task_type == "classification" else "test/pearson"
        out[view] = {"metric": key.split("/")[1], "value": float(test[key]), "dim": int(x.shape[1]),
                     "test": {k: float(v) for k, v in test.items()}, "extract_seconds": extract_s}
    return out


def format_report(results: dict[str, Any]) -> str:
    views = ("prefixes", "multitask", "frozen")
    lines = ["| target task | metric | prefixes combined | multi-task encoder | frozen encoder |",
             "|---|---|---:|---:|---:|"]
    for task, row in results["targets"].items():
        lines.append(f"| {task} | {row['prefixes']['metric']} | "
                     + " | ".join(f"{row[v]['value']:.3f}" for v in views) + " |")
    cost = results["update_cost"]
    lines += [
        "",
        f"Adding a source task ({cost['task']}): one prefix, {cost['prefix_trainable_parameters']:,} trainable "
        f"parameters, {cost['prefix_seconds']:.1f} s; multi-task training again on all source tasks: "
        f"{cost['multitask_trainable_parameters']:,} trainable parameters, {cost['multitask_seconds']:.1f} s "
        f"(x{cost['time_ratio']:.1f} the time, x{cost['parameter_ratio']:.0f} the parameters). Either way the fixed "
        "representations are extracted again.",
    ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    registry, reps = out / "registry", out / "representations"
    reps.mkdir(parents=True, exist_ok=True)
    sources = [t["name"] for t in manifest_tasks(args.manifest, ["source"])]
    targets = [TaskSpec.from_dict(t, args.manifest) for t in manifest_tasks(args.manifest, ["target"])]
    results: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k != "func"}, "sources": {}}
    for task in sources:
        results["sources"][task] = train_prefix(args, task, registry)
        print(f"prefix {task}: {results['sources'][task]['seconds']:.1f} s", flush=True)
    multitask, results["multitask"] = train_multitask(args, out / "multitask_encoder")
    print(f"multi-task encoder: {results['multitask']['seconds']:.1f} s", flush=True)
    frozen = build_encoder(args.backbone, seed=args.seed).eval()
    tokenizer = load_tokenizer(args.backbone)
    prefixes = [load_prefix(registry, t, encoder=frozen, backbone=args.backbone)[0] for t in sources]
    views = {"prefixes": (frozen, tokenizer, prefixes), "multitask": (multitask.encoder.eval(), tokenizer, []),
             "frozen": (frozen, tokenizer, [])}
    results["targets"] = {t.name: evaluate_target(args, t, views, reps) for t in targets}
    added = sources[-1]
    p, m = results["sources"][added], results["multitask"]
    results["update_cost"] = {
        "task": added, "prefix_seconds": p["seconds"], "prefix_trainable_parameters": p["trainable_parameters"],
        "multitask_seconds": m["seconds"], "multitask_trainable_parameters": m["trainable_parameters"],
        "time_ratio": m["seconds"] / p["seconds"],
        "parameter_ratio": m["trainable_parameters"] / p["trainable_parameters"],
    }
    report = format_report(results)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "report.md", report)
    print(report)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prefix representations vs multi-task vs frozen encoder, per target.")
    parser.add_argument("--manifest", default="data/multitask/tasks.json", help="tasks.json with source/target roles")
    parser.add_argument("--out", default="runs/prefix_report")
    parser.add_argument("--backbone", default="tiny-bert", help="a BERT-style encoder (tiny-bert, hf:<folder>)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each prefix and of multi-task training")
    parser.add_argument("--prefix-length", type=int, default=8)
    parser.add_argument("--prefix-lr", type=float, default=1e-2)
    parser.add_argument("--multitask-lr", type=float, default=1e-3)
    parser.add_argument("--pooling", choices=("mean", "cls"), default="mean")
    parser.add_argument("--combine", choices=("concat", "mean"), default="concat")
    parser.add_argument("--head", choices=("linear", "mlp"), default="linear")
    parser.add_argument("--head-epochs", type=int, default=20)
    parser.add_argument("--head-lr", type=float, default=1e-2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        run(args)
    except (ConfigError, DataError, UnknownModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
