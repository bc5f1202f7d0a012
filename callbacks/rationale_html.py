"""Token heat-maps of rationales: predicted against gold, for a few validation examples, as one HTML page.

After each validation epoch (sanity check excluded) the callback writes ``<log_dir>/rationales/epoch=NNN.html``
(atomically; rank 0). Each example shows its id, gold and predicted label, then its tokens twice: shaded by the
extractor's score (min-max scaled over the example's candidate tokens; the hard rationale is boxed), and with the
human rationale highlighted. It reads what ``UNIREX.validation_step`` returns: ``input_ids``, ``scores``,
``hard``, ``rationale``, ``candidate_mask`` (each (B, T)), ``labels``, ``preds`` and ``ids``.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from core.errors import ConfigError
from core.io import atomic_write_text

STYLE = """<style>
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; }
.ex { border-bottom: 1px solid #ccc; padding: 0.6em 0; }
.row { line-height: 2; margin: 0.2em 0; }
.tok { padding: 1px 2px; border-radius: 3px; }
.hard { outline: 2px solid #1a5fb4; }
.gold { background: rgba(46, 160, 67, 0.55); }
.other { color: #888; }
.wrong { color: #c01c28; }
</style>"""


def _clean(token: str) -> str:
    """A subword as text: byte-level (Ġ, Ċ) and SentencePiece (▁) space marks become spaces, WordPiece ## goes."""
    return token.replace("Ġ", " ").replace("▁", " ").replace("Ċ", " ").removeprefix("##")


class RationaleHTML(Callback):
    """Write ``num_examples`` validation examples as token heat-maps every ``every_n_epochs`` epochs.

    Args:
        num_examples: examples per page (the first ones of the validation loader).
        every_n_epochs: write after every N validation epochs.
        dirpath: folder of the pages; None = ``<trainer.log_dir>/rationales``.
    """

    def __init__(self, num_examples: int = 16, every_n_epochs: int = 1, dirpath: str | None = None) -> None:
        if num_examples < 1 or every_n_epochs < 1:
            raise ConfigError(f"num_examples and every_n_epochs must be >= 1, got {num_examples}, {every_n_epochs}")
        self.num_examples, self.every_n_epochs, self.dirpath = num_examples, every_n_epochs, dirpath
        self._rows: list[dict[str, Any]] = []
        self.last_path: Path | None = None

    def _active(self, trainer: Trainer) -> bool:
        return not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._rows = []

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self._active(trainer) or not isinstance(outputs, dict) or len(self._rows) >= self.num_examples:
            return
        cpu = {k: v.detach().cpu() for k, v in outputs.items() if isinstance(v, Tensor)}
        ids = outputs.get("ids") or [str(i) for i in range(len(cpu["labels"]))]
        for i in range(min(len(cpu["labels"]), self.num_examples - len(self._rows))):
            self._rows.append({"id": ids[i], **{k: v[i] for k, v in cpu.items()}})

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._active(trainer):
            return
        # trainer.log_dir broadcasts from rank 0: every rank asks, only rank 0 writes
        root = Path(trainer.log_dir or trainer.default_root_dir)
        folder = Path(self.dirpath) if self.dirpath else root / "rationales"
        if not self._rows or not trainer.is_global_zero:
            return
        names = getattr(trainer.datamodule, "label_names", None) if trainer.datamodule is not None else None
        path = folder / f"epoch={trainer.current_epoch:03d}.html"
        atomic_write_text(path, render_page(self._rows, pl_module.tokenizer, names, trainer.current_epoch))
        self.last_path = path


def _label(index: int, names: list[str] | None) -> str:
    return str(names[index]) if names and 0 <= index < len(names) else str(index)


def render_page(rows: list[dict[str, Any]], tokenizer: Any, label_names: list[str] | None, epoch: int) -> str:
    """The HTML page of ``rows`` (one dict per example, tensors of one row each)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Rationales, epoch {epoch}</title>{STYLE}",
             f"</head><body><h1>Rationales, epoch {epoch}</h1>",
             "<p>First line: the extractor's scores (darker = higher; boxed = hard rationale). "
             "Second line: the human rationale (green). Grey: tokens the extractor cannot select.</p>"]
    for row in rows:
        real = row["attention_mask"].bool()
        tokens = tokenizer.convert_ids_to_tokens(row["input_ids"][real].tolist())
        cand = row["candidate_mask"][real].bool()
        scores = row["scores"][real].float()
        lo, hi = (scores[cand].min(), scores[cand].max()) if cand.any() else (scores.min(), scores.max())
        shade = ((scores - lo) / (hi - lo)).clamp(0, 1) if hi > lo else scores * 0
        gold, pred = int(row["labels"]), int(row["preds"])
        verdict = "" if gold == pred else " class='wrong'"
        parts.append(f"<div class='ex'><b>{html.escape(str(row['id']))}</b> "
                     f"gold: {html.escape(_label(gold, label_names))}, "
                     f"<span{verdict}>predicted: {html.escape(_label(pred, label_names))}</span>")
        predicted, human = [], []
        for j, tok in enumerate(tokens):
            text = html.escape(_clean(tok))
            if not cand[j]:
                predicted.append(f"<span class='tok other'>{text}</span>")
                human.append(f"<span class='tok other'>{text}</span>")
                continue
            boxed = " hard" if bool(row["hard"][real][j]) else ""
            predicted.append(f"<span class='tok{boxed}' style='background: rgba(220, 50, 47, {float(shade[j]):.2f})' "
                             f"title='{float(scores[j]):.4g}'>{text}</span>")
            human.append(f"<span class='tok{' gold' if row['rationale'][real][j] > 0 else ''}'>{text}</span>")
        parts.append(f"<div class='row'>predicted: {''.join(predicted)}</div>")
        parts.append(f"<div class='row'>gold: {''.join(human)}</div></div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
