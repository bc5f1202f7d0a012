"""UNIREX against attribution baselines on the known-answer synthetic set, summarised by NRG (Chan et al. 2022).

Each variant trains the same task model (same seed, epochs, data: ``data/rationale/synthetic``) and is tested
with the ``UNIREX`` module that ``lm-suite fit`` trains; its ``metrics.json`` goes to ``<out>/<variant>/`` and the NRG
table over all variants is printed (``lm-suite nrg <out>/*`` prints it again). The variants mirror the paper's groups:

    AA (IG)           task loss only; rationales from integrated gradients (8 steps) at evaluation
    AA (attention)    task loss only; rationales from the last layer's [CLS] attention
    AA-F (IG)         IG rationales, and the task model trained with comprehensiveness + sufficiency
    UNIREX DLM-P      learned extractor on a separate encoder, plausibility only (+ task)
    UNIREX DLM-FP     learned extractor on a separate encoder, faithfulness + plausibility (+ task)
    UNIREX SLM-FP     the same with the extractor's head on the task model's own encoder

How to run
    python benchmarks/unirex_nrg.py                          # tiny-bert, 4 epochs, 1 thread (about 6 min on CPU)
    python benchmarks/unirex_nrg.py --backbone all-minilm-l6-v2 --lr 5e-5 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import torch  # noqa: E402
from lightning.pytorch import Trainer, seed_everything  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from datamodules.rationale import RationaleDataModule  # noqa: E402
from lightning_modules.unirex.module import UNIREX  # noqa: E402
from pipelines.nrg import format_table, nrg_table, read_metrics_file  # noqa: E402

TASK_ONLY = dict(comp_weight=0.0, suff_weight=0.0, plaus_weight=0.0)
FAITH = dict(comp_weight=0.5, suff_weight=0.5)
VARIANTS: dict[str, dict] = {
    "AA-IG": dict(extractor="integrated_gradients", **TASK_ONLY),
    "AA-attention": dict(extractor="attention", **TASK_ONLY),
    "AA-F-IG": dict(extractor="integrated_gradients", plaus_weight=0.0, **FAITH),
    "DLM-P": dict(extractor="learned", comp_weight=0.0, suff_weight=0.0, plaus_weight=0.5),
    "DLM-FP": dict(extractor="learned", plaus_weight=0.5, **FAITH),
    "SLM-FP": dict(extractor="learned", extractor_encoder="shared", plaus_weight=0.5, **FAITH),
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="tiny-bert")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", default="runs/unirex_nrg")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    data = ROOT / "data/rationale/synthetic"
    runs = {}
    for name in args.variants:
        seed_everything(0, verbose=False)
        dm = RationaleDataModule(train_files=str(data / "train.jsonl"), test_files=str(data / "test.jsonl"),
                                 max_length=128, batch_size=args.batch_size)
        model = UNIREX(backbone=args.backbone, lr=args.lr, **VARIANTS[name])
        folder = Path(args.out) / name
        trainer = Trainer(max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, default_root_dir=folder)
        start = time.perf_counter()
        trainer.fit(model, dm)
        fit_s = time.perf_counter() - start
        trainer.test(model, dm, verbose=False)
        runs[name] = read_metrics_file(folder / "metrics.json")
        print(f"{name}: fit {fit_s:.0f} s, " + ", ".join(
            f"{k.removeprefix('test/')} {runs[name][k]:.3f}" for k in
            ("test/accuracy", "test/comp_aopc", "test/suff_aopc", "test/auprc", "test/token_f1", "test/iou_f1")),
            flush=True)
    table = nrg_table(runs)
    print()
    print(format_table(table))
    (Path(args.out) / "nrg.json").write_text(json.dumps(table.as_dict(), indent=2) + "\n")


if __name__ == "__main__":
    main()
