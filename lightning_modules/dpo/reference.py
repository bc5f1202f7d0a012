"""Where DPO's reference log-probs come from: three ways, one interface.

- ``copy``: a frozen copy of the initial policy (or ``reference_backbone``) kept in memory. It is held as a
  plain attribute, not a registered submodule, so it is never written into checkpoints.
- ``adapter``: with a LoRA policy the reference is the same network with the adapter disabled: no extra memory.
- ``precomputed``: before training, the reference log-probs of every pair are computed once (each rank a
  shard), cached on disk as safetensors keyed by the data and model fingerprints, and the reference model is
  dropped: none sits in memory while training. A later run with the same data and weights reads the cache.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from core.backbones import model_fingerprint
from core.errors import ConfigError
from core.shard_cache import gather_rows, load_or_compute
from core.strategies import whole_model_on_each_rank

log = logging.getLogger(__name__)
ReferenceMode = Literal["auto", "copy", "adapter", "precomputed"]


class Reference:
    def __init__(
        self,
        mode: ReferenceMode,
        lora: bool,
        build: Callable[[], nn.Module],
        name: str,
        cache_dir: str,
        initial_policy: nn.Module | None,
    ) -> None:
        # The policy (with any LoRA adapter disabled) can serve as its own reference only when the reference is
        # the policy's initial weights, i.e. no separate reference_backbone was named.
        self.policy_is_reference = initial_policy is not None
        if mode == "auto":
            mode = "adapter" if lora and self.policy_is_reference else "copy"
        if mode == "adapter" and not (lora and self.policy_is_reference):
            raise ConfigError("reference='adapter' needs a LoRA policy (lora_r > 0) and no reference_backbone")
        self.mode = mode
        self.lora = lora
        self.build = build
        self.name = name
        self.cache_dir = Path(cache_dir)
        self.cache: dict[str, Tensor] = {}  # split -> (N, 2) chosen / rejected log-probs
        self.model: nn.Module | None = None
        if mode == "copy":
            self.model = copy.deepcopy(initial_policy) if initial_policy is not None else build()
            _freeze(self.model)
        elif mode == "precomputed":
            base = initial_policy if initial_policy is not None else build()
            # Fingerprint the untrained weights now: after a resume the policy holds trained ones.
            self.fingerprint = model_fingerprint(base, name)

    # --------------------------------------------------------------------------------------------- lookup
    @torch.no_grad()
    def logps(self, module: LightningModule, batch: dict[str, Any], split: str) -> tuple[Tensor, Tensor]:
        """Reference (chosen, rejected) summed log-probs, (B,) each."""
        if self.mode == "precomputed":
            if split not in self.cache:
                raise RuntimeError(f"reference log-probs for split {split!r} were not precomputed")
            vals = self.cache[split][batch["index"].cpu()].to(module.device)  # (B, 2)
            return vals[:, 0], vals[:, 1]
        if self.mode == "adapter":
            with module.policy.disable_adapter():
                out = module.sequence_logps(module.policy, batch)
        else:
            assert self.model is not None
            if _device(self.model) != module.device:
                self.model.to(module.device)
            out = module.sequence_logps(self.model, batch)
        return out["chosen"].detach(), out["rejected"].detach()

    # ---------------------------------------------------------------------------------------- precompute
    def prepare(self, module: LightningModule, splits: Iterable[str]) -> None:
        """Fill the cache for ``splits`` (precomputed mode only): read from disk or compute once."""
        if self.mode != "precomputed":
            return
        dm = module.trainer.datamodule
        for split in splits:
            if split in self.cache or not dm.has_split(split):
                continue
            precision = module.trainer.precision
            key = f"{dm.fingerprint(split)}:{self.fingerprint}:{precision}:{module.hparams.attention}"
            key = hashlib.sha256(key.encode()).hexdigest()[:24]
            path = self.cache_dir / f"{split}-{key}.safetensors"
            self.cache[split], hit = load_or_compute(module.trainer.strategy, path, "logps",
                                                     lambda split=split: self._compute(module, dm, split))
            log.info("reference log-probs for %s %s %s", split, "read from" if hit else "cached in", path)

    def _compute(self, module: LightningModule, dm: Any, split: str) -> Tensor:
        rank, world = module.global_rank, module.trainer.world_size
        if self.lora and self.policy_is_reference:
            net, ctx = module.policy, module.policy.disable_adapter()  # the frozen base is the reference
        elif self.policy_is_reference and model_fingerprint(module.policy, self.name) == self.fingerprint:
            net, ctx = module.policy, nullcontext()  # still untrained: the policy is the reference
        else:  # a trained (resumed or loaded) policy, or a separate reference_backbone: rebuild the reference
            net, ctx = self.build(), nullcontext()
            net.to(module.device)
            if model_fingerprint(net, self.name) != self.fingerprint:
                raise RuntimeError("the rebuilt reference model differs from the initial one: cannot precompute")
        was_training = net.training
        net.eval()
        n = dm.split_size(split)
        result = torch.zeros(n, 2)
        loader = dm.reference_dataloader(split, rank=rank, world_size=world)
        # Sharded weights are gathered by every rank at each forward: all ranks must run as many forwards, so a
        # rank with fewer rows repeats its last batch (its result is not kept). Rank 0 holds the most rows.
        sharded = not whole_model_on_each_rank(module.trainer.strategy)
        extra = len(dm.reference_dataloader(split, rank=0, world_size=world)) - len(loader) if sharded else 0
        with torch.no_grad(), ctx, module.trainer.precision_plugin.forward_context():
            batch = None
            for batch in loader:
                batch = module.transfer_batch_to_device(batch, module.device, 0)
                out = module.sequence_logps(net, batch)
                result[batch["index"].cpu()] = torch.stack([out["chosen"], out["rejected"]], -1).float().cpu()
            for _ in range(extra):
                module.sequence_logps(net, batch)
        net.train(was_training)
        return gather_rows(result)


def _freeze(model: nn.Module) -> None:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
