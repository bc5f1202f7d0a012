"""Task-prefix representations (Huang et al. 2023): batched k-prefix extraction, and the cost of adding a source task.

What is compared
    1. ``lightning_modules.prefix.networks.extract`` with k prefixes at once (each batch of ``--batch-size`` texts
       repeated k
       times along the batch axis, one forward of k * batch rows) against k sequential one-prefix calls,
       concatenated in the same column order, on the same ``--n-texts`` texts (round-robin over
       ``data/multitask/*/train.jsonl``); random prefixes (``PrefixEncoder(...).materialize()``), mean pooling,
       concat; outputs must be equal (max abs diff printed). On ``tiny-bert`` and any ``--backbone hf:<folder>``.
    2. Adding a source task (tiny-bert): ONE new prefix (``PrefixTuning`` on ``--new-task``) against rerunning
       multi-task fine-tuning (``MultiTaskEncoder`` on all source tasks; an epoch is one pass over every task's data),
       same ``--epochs`` and batch size, both by ``lightning.pytorch.Trainer`` on CPU (no validation or checkpoints;
       the timer covers ``trainer.fit``, tokenising included). Then the representations must be extracted again: k+1
       prefixes on the frozen encoder (old ones: random stand-ins) or, as the old columns do not change, only the new
       prefix's block appended; or the new encoder alone after multi-task training. Re-extracting the part 1 texts
       is timed too, so each path's whole update cost is shown.

    Every round runs every side once, in turn (part 1: every other round in reverse order), so outside load falls
    on all alike; the best of ``--repeats`` rounds is kept, after a warm-up. k = 1 does the same work on both sides:
    its ratio shows the noise. "load": cores other programs used meanwhile (/proc/stat, as in ``dpo_vs_trl.py``).

How to run
    python benchmarks/prefix_extraction.py                      # tiny-bert, 1 thread, k = 1 2 4 8, 2 epochs
    python benchmarks/prefix_extraction.py --backbone hf:/models/bert-base-uncased --k 1 4 --n-texts 500
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from functools import partial
from itertools import zip_longest
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import torch  # noqa: E402
import transformers  # noqa: E402
from lightning.pytorch import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from cpu_load import machine_busy_seconds, own_cpu_seconds  # noqa: E402

from core.backbones import build_encoder, load_tokenizer  # noqa: E402
from datamodules.multitask import MultiTaskDataModule, TextTaskDataModule, manifest_tasks  # noqa: E402
from lightning_modules.prefix.module import PrefixTuning  # noqa: E402
from lightning_modules.prefix.multitask import MultiTaskEncoder  # noqa: E402
from lightning_modules.prefix.networks import Prefix, PrefixEncoder, PrefixShape, extract  # noqa: E402

DATA = ROOT / "data" / "multitask"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backbone", default="tiny-bert", help="BERT encoder timed besides tiny-bert (hf:<folder>)")
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8], help="prefixes per extraction (default 1 2 4 8)")
    p.add_argument("--n-texts", type=int, default=2000, help="texts to extract (default 2000)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per extraction / training batch (default 32)")
    p.add_argument("--prefix-length", type=int, default=8, help="prefix length P (default 8)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds after a warm-up; best kept (default 5)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs of part 2 (default 2)")
    p.add_argument("--new-task", default="src_marked", help="the source task added in part 2 (default src_marked)")
    p.add_argument("--device", default="cpu", help="device of part 1's extraction (cpu or cuda; default cpu)")
    p.add_argument("--skip-update", action="store_true", help="run part 1 only")
    args = p.parse_args(argv)
    if min(args.k + [args.n_texts, args.batch_size, args.prefix_length, args.threads, args.repeats, args.epochs]) < 1:
        p.error("--k, --n-texts, --batch-size, --prefix-length, --threads, --repeats and --epochs must be >= 1")
    return args


class Meter:
    """Times calls; keeps the best wall time, the last result and the other programs' CPU seconds over all calls."""

    def __init__(self) -> None:
        self.best, self.wall, self.others, self.out = float("inf"), 0.0, 0.0, None

    def __call__(self, fn: Callable[[], Any]) -> Any:
        busy0, own0, t0 = machine_busy_seconds(), own_cpu_seconds(), time.perf_counter()
        self.out = fn()
        wall = time.perf_counter() - t0
        self.others += max(0.0, machine_busy_seconds() - busy0 - (own_cpu_seconds() - own0))
        self.wall, self.best = self.wall + wall, min(self.best, wall)
        return self.out


def load_texts(n: int) -> list[str]:
    per_file = [[json.loads(line)["text"] for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
                for f in sorted(DATA.glob("*/train.jsonl"))]
    mixed = [t for row in zip_longest(*per_file) for t in row if t is not None]
    if len(mixed) < n:
        raise SystemExit(f"error: --n-texts {n}, but {DATA}/*/train.jsonl hold only {len(mixed)} texts")
    return mixed[:n]


def random_prefixes(encoder: Any, k: int, length: int, seed: int = 0) -> list[Prefix]:
    torch.manual_seed(seed)
    return [PrefixEncoder(PrefixShape.of(encoder), length).materialize(name=f"random{i}") for i in range(k)]


def bench_extraction(backbone: str, texts: list[str], args: argparse.Namespace, summary: list[str]) -> None:
    encoder, tok = build_encoder(backbone, seed=0).eval().to(args.device), load_tokenizer(backbone)
    prefixes, bs = random_prefixes(encoder.cpu(), max(args.k), args.prefix_length), args.batch_size
    encoder.to(args.device)  # extract() returns CPU tensors, so each timed call ends synchronised
    sides = {
        "batched": lambda rows, k: extract(encoder, tok, rows, prefixes[:k], batch_size=bs),
        "sequential": lambda rows, k: torch.cat([extract(encoder, tok, rows, [p], batch_size=bs)
                                                 for p in prefixes[:k]], dim=1),
    }
    meters = {(k, side): Meter() for k in args.k for side in sides}
    for k in args.k:  # warm-up: one batch each
        for fn in sides.values():
            fn(texts[:bs], k)
    for r in range(args.repeats):  # odd rounds run in reverse order: which side goes first is no bias
        for (k, side), meter in list(meters.items())[:: 1 if r % 2 == 0 else -1]:
            meter(partial(sides[side], texts, k))
    params = sum(p.numel() for p in encoder.parameters())
    header = (f"{'k':>3}{'batched t/s':>13}{'sequential t/s':>16}{'batched s':>11}{'sequential s':>14}"
              f"{'rows/pass':>11}{'max|diff|':>11}{'load':>6}{'ratio':>7}")
    print(f"\n{backbone} ({params / 1e6:.2f}M params, hidden {encoder.config.hidden_size}): {len(texts)} texts, "
          f"batch {bs} texts, prefix length {args.prefix_length}, threads {args.threads}, {args.device} (ratio: "
          f"sequential s / "
          f"batched s; load: other programs' cores, both sides)\n{header}\n{'-' * len(header)}")
    for k in args.k:
        b, s = meters[(k, "batched")], meters[(k, "sequential")]
        diff = (b.out - s.out).abs().max().item()
        load = (b.others + s.others) / (b.wall + s.wall)
        print(f"{k:>3}{len(texts) / b.best:>13.0f}{len(texts) / s.best:>16.0f}{b.best:>11.3f}{s.best:>14.3f}"
              f"{k * bs:>11}{diff:>11.1e}{load:>6.2f}{s.best / b.best:>7.2f}")
        summary.append(f"{backbone} k={k}: batched/sequential texts/s ratio {s.best / b.best:.2f} (max abs diff "
                       f"{diff:.1e})")


def fit(module: Any, datamodule: Any, epochs: int, limit: int | None = None) -> int:
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      num_sanity_val_steps=0, limit_train_batches=limit)
    trainer.fit(module, datamodule=datamodule)
    return trainer.global_step


def bench_update(texts: list[str], args: argparse.Namespace, summary: list[str]) -> None:
    manifest, bs, backbone = str(DATA / "tasks.json"), args.batch_size, "tiny-bert"
    sources = {t["name"]: t for t in manifest_tasks(manifest, ["source"])}
    if args.new_task not in sources:
        raise SystemExit(f"error: --new-task {args.new_task!r} is not a source task of {manifest}: {sorted(sources)}")

    def prefix_side(limit: int | None = None) -> tuple[PrefixTuning, int]:
        pt = PrefixTuning(backbone, args.new_task, sources[args.new_task]["num_labels"], args.prefix_length)
        return pt, fit(pt, TextTaskDataModule(manifest=manifest, task=args.new_task, batch_size=bs), args.epochs, limit)

    def multitask_side(limit: int | None = None) -> tuple[MultiTaskEncoder, int]:
        torch.manual_seed(0)  # the heads are built in setup
        mt = MultiTaskEncoder(backbone)
        return mt, fit(mt, MultiTaskDataModule(manifest=manifest, roles=["source"], batch_size=bs), args.epochs, limit)

    prefix_side(2), multitask_side(2)  # warm-up
    names = ["prefix train", "multi-task train", "re-extract k+1", "append new block", "re-extract encoder"]
    m = {name: Meter() for name in names}
    for _ in range(args.repeats):
        (pt, p_steps), (mt, m_steps) = m["prefix train"](prefix_side), m["multi-task train"](multitask_side)
        old = random_prefixes(pt.encoder, len(sources) - 1, args.prefix_length, seed=100)  # the k existing ones
        new = pt.materialize()
        m["re-extract k+1"](partial(extract, pt.encoder, pt.tokenizer, texts, [*old, new], batch_size=bs))
        m["append new block"](partial(extract, pt.encoder, pt.tokenizer, texts, [new], batch_size=bs))
        m["re-extract encoder"](partial(extract, mt.encoder, mt.tokenizer, texts, [], batch_size=bs))
    p_train, m_train = (sum(p.numel() for p in x.parameters() if p.requires_grad) for x in (pt, mt))
    k1, tp, tm = len(sources), m["prefix train"].best, m["multi-task train"].best
    rows = [(f"new prefix + re-extract {k1} prefixes", p_train, p_steps, "prefix train", "re-extract k+1"),
            ("new prefix + append its block only", p_train, p_steps, "prefix train", "append new block"),
            (f"multi-task rerun ({k1} tasks) + re-extract", m_train, m_steps, "multi-task train", "re-extract encoder")]
    header = f"{'update path':<44}{'trainable':>10}{'steps':>7}{'train s':>9}{'extract s':>11}{'total s':>9}{'load':>6}"
    print(f"\nadding source task {args.new_task!r} on {backbone}: {args.epochs} epochs, batch {bs}, threads "
          f"{args.threads}; extraction of the {len(texts)} part-1 texts must be rerun after either update (load: "
          f"training + extraction)\n{header}\n{'-' * len(header)}")
    for name, n_params, steps, train_name, ext_name in rows:
        train, ext = m[train_name], m[ext_name]
        load = (train.others + ext.others) / (train.wall + ext.wall)
        print(f"{name:<44}{n_params:>10,}{steps:>7}{train.best:>9.3f}{ext.best:>11.3f}{train.best + ext.best:>9.3f}"
              f"{load:>6.2f}")
    total_m = tm + m["re-extract encoder"].best
    print(f"trainable: prefix MLP + head {p_train:,} ({new.keys.numel() * 2:,} materialised key/value numbers kept) "
          f"vs encoder + {k1} heads {m_train:,} ({m_train / p_train:.1f}x)")
    summary.append(f"update: training time ratio multi-task/one prefix {tm / tp:.2f}; total with re-extraction "
                   f"{total_m / (tp + m['re-extract k+1'].best):.2f} (k+1 prefixes) / "
                   f"{total_m / (tp + m['append new block'].best):.2f} (append new block)")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("lightning")]:
        logging.getLogger(name).setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    texts = load_texts(args.n_texts)
    print(f"{len(texts)} texts from {DATA}/*/train.jsonl; repeats={args.repeats} (best kept after a warm-up); "
          f"torch {torch.__version__}, transformers {transformers.__version__}, {os.cpu_count()} cores, loadavg "
          f"before {os.getloadavg()[0]:.2f}", flush=True)
    summary: list[str] = []
    busy0, own0, t0 = machine_busy_seconds(), own_cpu_seconds(), time.perf_counter()  # for the outside-load verdict
    for backbone in dict.fromkeys(["tiny-bert", args.backbone]):
        bench_extraction(backbone, texts, args, summary)
    if not args.skip_update:
        bench_update(texts, args, summary)
    if torch.get_num_threads() != args.threads:
        print(f"warning: torch threads changed to {torch.get_num_threads()} during the run")
    wall, cores = time.perf_counter() - t0, os.cpu_count() or 1
    others = max(0.0, machine_busy_seconds() - busy0 - (own_cpu_seconds() - own0)) / wall
    verdict = ("" if others <= 0.1 else " -- timings are skewed (fewer free cores than threads); rerun on a quieter"
               " machine" if others + args.threads > cores + 0.1 else " -- a core per thread stayed free, but shared"
               " caches and memory bandwidth may still slow the run a little")
    print(f"\noutside load over the whole run ({wall:.0f} s): other programs used {others:.2f} of {cores} cores "
          f"on average{verdict}")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
