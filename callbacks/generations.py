"""Sample generations from the policy during training: a quick look at what the model says.

Every ``every_n_steps`` optimizer steps and once more at the end of training, the policy completes a few prompts
(greedy by default). Prompts are either given as strings (rendered with the tokenizer's chat template, with the
generation prompt) or taken from the first pairs of the datamodule's validation split, whose prompt ids already
hold the template. Samples go to ``samples.jsonl`` in the run's log folder (one JSON object per line:
``{"step", "prompt", "completion"}``), to the logger when it takes text (TensorBoard, Weights & Biases) and to
the console.

Only rank 0 generates (other ranks go on; no collective is involved), except where the weights are sharded and
gathered by every rank at each forward (FSDP2 through ``core.strategies.FSDP2Strategy``, DeepSpeed ZeRO-3): there
all ranks generate the same prompts with ``synced_gpus=True`` (a rank that has finished keeps running forwards until
all have) and rank 0 writes. Under Lightning's FSDP1 strategy generation is skipped with a one-line warning.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from callbacks.throughput import not_timed
from core.errors import ConfigError


class SampleGenerations(Callback):
    """Generate from a few prompts during training and write the samples out.

    Args:
        every_n_steps: generate after every N optimizer steps (0 = only at the end of training).
        max_new_tokens: tokens generated per prompt.
        temperature: 0 = greedy decoding; above 0, sampling at that temperature (seeded, see ``seed``).
        prompts: user messages to complete; None takes the first ``num_prompts`` prompts of the validation split
            (``trainer.datamodule.datasets["val"]``, or ``"train"`` when there is no validation split).
        num_prompts: how many dataset prompts to use when ``prompts`` is None.
        seed: seed of sampling (the global RNG state of training is restored afterwards).
        filename: name of the JSON-lines file in ``trainer.log_dir`` (or ``default_root_dir``).
        at_train_end: also generate once at the end of training (unless that step was just sampled).
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        prompts: list[str] | None = None,
        num_prompts: int = 2,
        seed: int = 0,
        filename: str = "samples.jsonl",
        at_train_end: bool = True,
    ) -> None:
        if every_n_steps < 0:
            raise ConfigError(f"every_n_steps must be >= 0, got {every_n_steps}")
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {temperature}")
        if prompts is not None and not prompts:
            raise ConfigError("prompts is an empty list; give at least one prompt or None for dataset prompts")
        if num_prompts < 1:
            raise ConfigError(f"num_prompts must be >= 1, got {num_prompts}")
        self.every_n_steps = every_n_steps
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.prompts = prompts
        self.num_prompts = num_prompts
        self.seed = seed
        self.filename = filename
        self.at_train_end = at_train_end
        self._inputs: list[tuple[str, list[int]]] = []  # (prompt text to log, prompt ids)
        self._last_step = -1
        self._skip_warned = False

    # ------------------------------------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Resolve the prompts now, so a missing tokenizer or dataset fails before training, not at step N."""
        tok = self._resolve_tokenizer(trainer, pl_module)
        if self.prompts is not None:
            self._inputs = [(p, self._encode(tok, p)) for p in self.prompts]
        else:
            self._inputs = [(tok.decode(ids), list(ids)) for ids in self._dataset_prompts(trainer)]
        self._last_step = trainer.global_step  # a resumed run does not re-sample the step it resumed at

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps and step != self._last_step and step % self.every_n_steps == 0:
            self.generate(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_train_end and trainer.global_step != self._last_step:
            self.generate(trainer, pl_module)

    # ------------------------------------------------------------------------------------------- generation
    def generate(self, trainer: Trainer, pl_module: LightningModule) -> list[dict[str, Any]]:
        """Complete every prompt with the current weights; write and log the samples (rank 0). Returns them."""
        step = trainer.global_step
        self._last_step = step
        if isinstance(trainer.strategy, FSDPStrategy):
            if not self._skip_warned:
                name = type(trainer.strategy).__name__
                rank_zero_warn(f"SampleGenerations: generation under {name} is not supported; skipped")
                self._skip_warned = True
            return []
        sharded = isinstance(trainer.strategy, (DeepSpeedStrategy, ModelParallelStrategy))
        synced = sharded and trainer.world_size > 1
        path = self.output_path(trainer)  # on every rank: `trainer.log_dir` broadcasts (a collective)
        if not (synced or trainer.is_global_zero):
            return []
        tok = self._resolve_tokenizer(trainer, pl_module)
        policy: nn.Module = pl_module.policy
        samples = []
        modes = {m: m.training for m in policy.modules()}
        policy.eval()
        device = pl_module.device
        fork = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
        try:
            with not_timed(trainer), fork if self.temperature > 0 else nullcontext(), torch.no_grad():
                if self.temperature > 0:
                    torch.manual_seed(self.seed + step)
                for text, ids in self._inputs:
                    input_ids = torch.tensor([ids], dtype=torch.long, device=device)  # (1, P)
                    out = policy.generate(
                        input_ids=input_ids,
                        attention_mask=torch.ones_like(input_ids),
                        max_new_tokens=self.max_new_tokens,
                        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                        eos_token_id=tok.eos_token_id,
                        **self._sampling_kwargs(synced),
                    )  # (1, P + new)
                    completion = tok.decode(out[0, len(ids):], skip_special_tokens=True)
                    samples.append({"step": step, "prompt": text, "completion": completion})
        finally:
            for m, training in modes.items():
                m.train(training)
        if trainer.is_global_zero:
            self._write(trainer, path, samples)
        return samples

    def _sampling_kwargs(self, synced: bool) -> dict[str, Any]:
        kw: dict[str, Any] = {"do_sample": self.temperature > 0}
        if self.temperature > 0:
            kw.update(temperature=self.temperature, top_k=0, top_p=1.0)
        else:  # neutralise sampling settings a pretrained generation_config may carry (avoids warnings)
            kw.update(temperature=None, top_k=None, top_p=None)
        if synced:
            kw["synced_gpus"] = True
        return kw

    # ------------------------------------------------------------------------------------------------ output
    def output_path(self, trainer: Trainer) -> Path:
        """``<trainer.log_dir or default_root_dir>/<filename>``."""
        return Path(trainer.log_dir or trainer.default_root_dir) / self.filename

    def _write(self, trainer: Trainer, path: Path, samples: list[dict[str, Any]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            for s in samples:
                f.write(json.dumps(s, ensure_ascii=False) + "\n")
        for i, s in enumerate(samples):
            rank_zero_info(f"[step {s['step']}] sample {i}\n--- prompt ---\n{s['prompt']}\n--- completion ---\n"
                           f"{s['completion']}")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for i, s in enumerate(samples):
                    text = f"**prompt**\n\n```\n{s['prompt']}\n```\n\n**completion**\n\n```\n{s['completion']}\n```"
                    logger.experiment.add_text(f"samples/{i}", text, global_step=s["step"])
            elif isinstance(logger, WandbLogger):
                logger.log_text(
                    key="samples", columns=["step", "prompt", "completion"],
                    data=[[s["step"], s["prompt"], s["completion"]] for s in samples], step=samples[0]["step"],
                )

    # ------------------------------------------------------------------------------------------------ prompts
    @staticmethod
    def _resolve_tokenizer(trainer: Trainer, pl_module: LightningModule) -> Any:
        """The module's tokenizer (or the datamodule's); also checks that the module has a ``policy`` to sample."""
        tok = getattr(pl_module, "tokenizer", None)
        if tok is None and trainer.datamodule is not None:
            tok = getattr(trainer.datamodule, "tokenizer", None)
        if tok is None:
            raise ConfigError("SampleGenerations needs a tokenizer: `pl_module.tokenizer` (or the datamodule's)")
        if not hasattr(pl_module, "policy"):
            raise ConfigError(f"SampleGenerations needs `pl_module.policy` (a generating LM); "
                             f"{type(pl_module).__name__} has none")
        return tok

    @staticmethod
    def _encode(tok: Any, prompt: str) -> list[int]:
        """A user message rendered with the chat template (generation prompt on), or BOS + text without one; the
        prompt is tokenised as text (special-token strings in it stay characters)."""
        if getattr(tok, "chat_template", None):
            from core.generation import prompt_ids

            return prompt_ids(tok, prompt)
        return tok(prompt, split_special_tokens=True)["input_ids"]

    def _dataset_prompts(self, trainer: Trainer) -> list[list[int]]:
        datasets = getattr(trainer.datamodule, "datasets", None) or {}
        split = "val" if "val" in datasets else "train" if "train" in datasets else None
        if split is None:
            raise ConfigError("SampleGenerations: prompts=None takes prompts from `trainer.datamodule.datasets"
                             "['val']` (or 'train'), but the datamodule has none; pass prompts=[...]")
        pairs = datasets[split].pairs[: self.num_prompts]
        if not pairs:
            raise ConfigError(f"SampleGenerations: the {split!r} split is empty; pass prompts=[...]")
        return [list(p.prompt) for p in pairs]
