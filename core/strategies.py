"""FSDP for Hugging Face models: wrap and checkpoint each decoder layer without naming its class.

Every Hugging Face model lists the blocks that must not be split across devices in ``_no_split_modules``
(``LlamaDecoderLayer``, ``Qwen2DecoderLayer``, ...). :class:`HFFSDPStrategy` reads those names from the
LightningModule's networks at wrap time, so one trainer preset (``configs/trainer/fsdp.yaml``) serves any
backbone: FSDP units and activation checkpointing are placed on the decoder layers.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import FSDPStrategy
from torch import nn


def whole_model_on_each_rank(strategy: Any) -> bool:
    """True for one device or DDP, where every rank holds all the parameters; False for sharding strategies (FSDP,
    DeepSpeed, model parallel)."""
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy

    return isinstance(strategy, DDPStrategy | SingleDeviceStrategy) and not isinstance(strategy, DeepSpeedStrategy)


def decoder_layer_classes(model: nn.Module, names: list[str] | None = None) -> set[type[nn.Module]]:
    """Classes of ``model``'s submodules named in ``names`` or, by default, in any ``_no_split_modules``."""
    wanted = set(names or [])
    if not wanted:
        for m in model.modules():
            wanted.update(getattr(m, "_no_split_modules", None) or [])
    found = {type(m) for m in model.modules() if type(m).__name__ in wanted}
    if not found:
        raise ValueError(
            f"no submodule of {type(model).__name__} matches the layer names {sorted(wanted) or '(none declared)'}; "
            "pass layer_classes=[...] to HFFSDPStrategy"
        )
    return found


class HFFSDPStrategy(FSDPStrategy):
    """:class:`FSDPStrategy` whose auto-wrap (and activation-checkpointing) policy is the model's decoder layers.

    Args:
        layer_classes: class names to wrap; default: every name in the model's ``_no_split_modules``.
        checkpoint_layers: activation checkpointing on those layers.
        **kwargs: passed to :class:`FSDPStrategy` (``sharding_strategy``, ``state_dict_type``, ...).
    """

    def __init__(self, layer_classes: list[str] | None = None, checkpoint_layers: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.layer_classes = layer_classes
        self.checkpoint_layers = checkpoint_layers

    def _setup_model(self, model: nn.Module) -> nn.Module:  # pragma: no cover - FSDP needs a GPU
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        classes = decoder_layer_classes(model, self.layer_classes)
        self.kwargs.setdefault("auto_wrap_policy", ModuleWrapPolicy(classes))
        if self.checkpoint_layers and not self._activation_checkpointing_kwargs:
            self._activation_checkpointing_kwargs = {"auto_wrap_policy": ModuleWrapPolicy(classes)}
        return super()._setup_model(model)
