"""MSD training step: cached against live teacher outputs, MSD against plain KD, learned weights against instance.

What is compared (one training step = the student's forward on its views + loss + backward + AdamW step, and for
``learned`` the bilevel meta step before it; the student and data of ``configs/msd.yaml``)
    cached        MSD, ``weighting: instance``, the teacher's logits on the three views (full, image only, text only)
                  looked up from a :class:`~lightning_modules.msd.teacher.TeacherOutputs` cache: no teacher
                  forward in the step (the default).
    live          the same with ``teacher_outputs: live``: the teacher runs on the 3B rows of every batch.
    plain KD      ``weighting: none`` (cached teacher): task + KD on the full input only, the student's forward
                  on B rows instead of 3B: the baseline MSD is compared against.
    learned       ``weighting: learned`` (cached teacher): a weight network fitted by one-step-lookahead bilevel
                  optimisation on a held-out batch, a meta step on every batch (``meta_every: 1``), with
                  Lightning's manual optimisation.

How it is timed: every variant is a real ``MSD`` module trained by a real ``lightning.Trainer`` (``trainer.fit``,
no logger, checkpoints, progress bar or validation), so the step is exactly what ``lm-suite fit`` runs, Lightning's
optimisation loop and ``self.log`` calls included. A callback takes the time from ``on_train_batch_start`` to
``on_train_batch_end`` (the batch is already loaded then, and for automatic optimisation the optimiser has
stepped; CUDA is synchronised at both ends), and drops the first ``--warmup`` steps of every fit (the optimiser's
state is created then). Every round fits every variant once, for ``--warmup + --steps`` steps, in turn (every
other round in reverse order), so outside load falls on all alike; the best round's mean is kept. "load" is what
other programs used of the machine meanwhile (/proc/stat), so a busy machine shows.

Data: ``data/multimodal/synthetic/train.jsonl`` through ``MultimodalDataModule`` (unshuffled, so every variant
and round trains on the same batches; ``heldout_fraction: 0.1`` for all variants, so the training rows are the same
ones the ``learned`` variant needs its held-out split beside). Loading images is outside the timed span for the
training batch; the ``learned`` meta step also reads a held-out batch inside the step in real training: here those
batches are read once beforehand (the timed span is compute only), and the load time of one held-out batch is
printed separately.

The teacher-output cache is built once, into a fresh temporary folder, and its build time printed (teacher forward
on the three views of every training row, images loaded and held-out rows included, saved as safetensors): the
price ``cached`` pays once per teacher + data + settings, and ``live`` pays spread over every epoch.

How to run
    python benchmarks/msd_step.py                                          # CPU, 1 thread, batch 32
    python benchmarks/msd_step.py --threads 2 --steps 8 --repeats 5
    python benchmarks/msd_step.py --device cuda --precision bf16-mixed     # a GPU
The teacher (``--teacher``, default ``runs/multimodal_teacher/export``) is made by
``lm-suite fit --config configs/multimodal_teacher.yaml`` (about a minute on 2 CPU threads).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import torch  # noqa: E402
import yaml  # noqa: E402
from lightning.pytorch import Callback, LightningModule, Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
from cpu_load import machine_busy_seconds, own_cpu_seconds  # noqa: E402

from datamodules.multimodal import MultimodalDataModule  # noqa: E402
from lightning_modules.msd.classifier import MultimodalClassifier  # noqa: E402
from lightning_modules.msd.module import MSD  # noqa: E402
from lightning_modules.msd.teacher import TeacherOutputs, TeacherSettings, cache_file, cache_metadata, compute_outputs  # noqa: E402
from lightning_modules.msd.weighting import Learned  # noqa: E402

VARIANTS = {
    "cached": dict(weighting="instance", teacher_outputs="cached"),
    "live": dict(weighting="instance", teacher_outputs="live"),
    "plain KD": dict(weighting="none", teacher_outputs="cached"),
    "learned": dict(weighting="learned", teacher_outputs="cached", meta_every=1),
}


class StepTimer(Callback):
    """Seconds of each training step, ``on_train_batch_start`` to ``on_train_batch_end``, the first ``skip``
    dropped; ``heldout``: batches the ``learned`` meta step cycles through instead of its loader."""

    def __init__(self, skip: int, cuda: bool, heldout: list[dict[str, Any]] | None) -> None:
        self.skip, self.cuda, self.heldout = skip, cuda, heldout
        self.times: list[float] = []
        self._start, self._seen = 0.0, 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if isinstance(getattr(pl_module, "scheme", None), Learned) and self.heldout is not None:
            pl_module.scheme.heldout = itertools.cycle(self.heldout)  # on_fit_start has run: replace its loader

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self._seen += 1  # steps of this fit (batch_idx restarts every epoch)
        if self._seen > self.skip:
            self.times.append(time.perf_counter() - self._start)


def fit_steps(model: MSD, dm: MultimodalDataModule, args: argparse.Namespace, root: str,
              heldout: list[dict[str, Any]] | None) -> float:
    """Mean seconds per step of one ``trainer.fit`` of ``--warmup + --steps`` steps (the warm-up steps dropped)."""
    timer = StepTimer(args.warmup, args.device == "cuda", heldout)
    trainer = Trainer(
        max_steps=args.warmup + args.steps, accelerator="gpu" if args.device == "cuda" else "cpu", devices=1,
        precision=args.precision, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=root,
        callbacks=[timer],
    )
    trainer.fit(model, datamodule=dm)
    if len(timer.times) != args.steps:
        raise RuntimeError(f"timed {len(timer.times)} steps, expected {args.steps} (too few training batches?)")
    return sum(timer.times) / len(timer.times)


def build_cache(teacher_path: str, dm: MultimodalDataModule, model_args: dict[str, Any], cache_dir: str,
                device: str) -> tuple[float, float, int]:
    """Fill ``cache_dir`` with the teacher's outputs as ``MSD`` would at setup: (load s, build s, rows)."""
    start = time.perf_counter()
    teacher = MultimodalClassifier.load(teacher_path).to(device)
    loaded = time.perf_counter()
    settings = TeacherSettings.of(teacher, dm, model_args.get("image_removal", "blank"),
                                  model_args.get("text_removal", "empty"))
    meta = cache_metadata(teacher, dm.fingerprint("train"), settings)
    rows = len(dm.examples("train"))
    outputs = TeacherOutputs(compute_outputs(teacher.net, dm.teacher_loader("train"), rows, settings, dm.tokenizer,
                                             device))  # float32, as MSD computes it whatever the precision
    outputs.save(cache_file(cache_dir, meta), meta)
    if device == "cuda":
        torch.cuda.synchronize()
    done = time.perf_counter()
    TeacherOutputs.load(cache_file(cache_dir, meta))  # what MSD reads: it exists and parses
    return loaded - start, done - loaded, rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs/msd.yaml"), help="the student and data settings")
    p.add_argument("--teacher", default=str(ROOT / "runs/multimodal_teacher/export"))
    p.add_argument("--train-file", default=str(ROOT / "data/multimodal/synthetic/train.jsonl"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=4, help="timed steps per fit")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of every fit")
    p.add_argument("--repeats", type=int, default=3, help="rounds (every variant fitted once per round)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--precision", default="32-true", help="the Trainer's precision (e.g. bf16-mixed on a GPU)")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    if not Path(args.teacher).exists():
        sys.exit(f"no teacher at {args.teacher}: lm-suite fit --config configs/multimodal_teacher.yaml")

    config = yaml.safe_load(Path(args.config).read_text())
    model_args = dict(config["model"]["init_args"])
    data_args = dict(config["data"]["init_args"])
    model_args.update(teacher=args.teacher, teacher_recipe=None)
    tmp = tempfile.TemporaryDirectory(prefix="msd_step_")
    model_args["cache_dir"] = str(Path(tmp.name) / "cache")
    dm = MultimodalDataModule(
        train_file=args.train_file, image_size=data_args.get("image_size", 64), batch_size=args.batch_size,
        max_length=data_args.get("max_length", 64), heldout_fraction=0.1, shuffle=False,
        tokenizer=model_args["text_backbone"],
    )
    dm.setup("fit")

    load_s, build_s, rows = build_cache(args.teacher, dm, model_args, model_args["cache_dir"], args.device)
    start = time.perf_counter()
    heldout_batches = list(dm.heldout_dataloader())
    heldout_load = (time.perf_counter() - start) / len(heldout_batches)
    heldout = [{k: v.to(args.device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}
               for b in heldout_batches]

    models = {name: MSD(**{**model_args, **kw}) for name, kw in VARIANTS.items()}
    for model in models.values():  # setup (teacher, cache read) and a first warm-up fit, untimed
        fit_steps(model, dm, args, tmp.name, heldout)
    # the cache holds what the live teacher computes (same rows, eval transform, no flip: equal up to float noise)
    first = {k: v.to(args.device) if isinstance(v, torch.Tensor) else v for k, v in
             next(iter(dm.train_dataloader())).items()}
    with torch.no_grad():
        live = models["live"]
        cached = models["cached"]._teacher_logits(first, {})
        diff = (cached - live._teacher_logits(first, live._inputs(first))).abs().max()
    print(f"cached vs live teacher logits (3 views of a training batch), max abs difference: {float(diff):.2e}")
    best = {name: float("inf") for name in models}
    busy0, own0, wall0 = machine_busy_seconds(), own_cpu_seconds(), time.perf_counter()
    for r in range(args.repeats):
        order = list(models) if r % 2 == 0 else list(reversed(models))
        for name in order:
            best[name] = min(best[name], fit_steps(models[name], dm, args, tmp.name, heldout))
    load = (machine_busy_seconds() - busy0 - (own_cpu_seconds() - own0)) / (time.perf_counter() - wall0)

    teacher = MultimodalClassifier.load(args.teacher)
    student = models["cached"]
    n_params = lambda m: sum(q.numel() for q in m.net.parameters()) / 1e6  # noqa: E731
    th, sh = teacher.hparams, student.hparams
    print(f"student {sh.image_backbone} + {sh.text_backbone} ({n_params(student):.2f}M), teacher "
          f"{th.image_backbone} + {th.text_backbone} ({n_params(teacher):.2f}M), {sh.image_size}px, batch "
          f"{args.batch_size} (3 x {args.batch_size} rows with the modality views), device {args.device}, precision "
          f"{args.precision}, threads {args.threads}")
    print(f"best of {args.repeats} rounds x {args.steps} steps (after {args.warmup} warm-up step per fit), outside "
          f"load {max(load, 0.0):.2f} cores")
    print(f"teacher-output cache: {rows} rows x 3 views built in {build_s:.2f} s (teacher load {load_s:.2f} s); one "
          f"held-out batch loads in {heldout_load * 1e3:.1f} ms (learned reads one per meta step; not timed below)")
    base = best["cached"]
    print(f"{'variant':<10} {'ms/step':>9} {'x cached':>9}")
    for name, t in best.items():
        print(f"{name:<10} {t * 1e3:9.1f} {t / base:9.2f}")
    print(f"live / cached: {best['live'] / base:.2f}x")
    print(f"MSD (instance, cached) / plain KD: {base / best['plain KD']:.2f}x")
    print(f"learned / instance: {best['learned'] / base:.2f}x")
    tmp.cleanup()


if __name__ == "__main__":
    main()
