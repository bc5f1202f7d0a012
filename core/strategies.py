"""Sharded training with FSDP2 (``torch.distributed.fsdp.fully_shard``) for every objective of the suite.

:class:`FSDP2Strategy` is Lightning's :class:`~lightning.pytorch.strategies.ModelParallelStrategy` with the mesh set
to pure data parallelism (every process shards the weights) and the suite's rules on top:

- **What is sharded.** Each LightningModule's ``configure_model`` (:class:`Shardable`) hands the strategy its
  transformer networks: every Hugging Face model in the module (and any it holds outside the module tree, such as
  DPO's frozen reference copy). Each block named in the network's ``_no_split_modules`` (``LlamaDecoderLayer``,
  ``BertLayer``...) becomes one FSDP unit; the rest of the network is the root unit. The suite's log-prob code runs
  a causal LM's decoder and then its head on the response positions only
  (:func:`core.backbones.hidden_and_logits`); that pass is registered as a forward method of the sharded root
  (``register_fsdp_forward_method``), so FSDP gathers the root's weights around it as around ``forward`` (which
  ``generate`` uses).
- **What is replicated.** Parameters outside any network (classifier and value heads, prefixes, fusion layers, timm
  image encoders) stay whole on each rank; the strategy broadcasts them from rank 0 at setup and averages their
  gradients after each backward, as DDP would.
- **Mixed precision** is FSDP2's policy (``param_dtype`` for compute, ``reduce_dtype`` for gradient reduction, fp32
  outputs of each network so heads and losses see fp32), with the trainer at ``32-true``: fp32 master weights and
  optimizer state.
- **Checkpoints** are distributed-checkpoint folders (one file per rank plus ``meta.pt``), written to a temporary
  folder beside the target and renamed into place, so a crash never leaves a half-written ``last.ckpt``. "Save only
  what trains" holds: with LoRA the frozen base stays out, and loading refills it from the rebuilt model.

Objectives with nothing worth sharding (a head on fixed features) set ``supports_sharding = False`` and are refused
before any work (:func:`check_sharding`).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import MethodType
from typing import Any, Literal

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from core.backbones import LM_ENTRY, _hidden_and_logits
from core.errors import ConfigError

PRESET = "configs/trainer/fsdp.yaml"


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
            "pass layer_classes=[...] to FSDP2Strategy"
        )
    return found


def transformer_networks(module: nn.Module) -> list[nn.Module]:
    """The outermost Hugging Face models inside ``module`` (a PEFT wrapper's base model included), in module order."""
    from transformers import PreTrainedModel

    found: list[nn.Module] = []
    for m in module.modules():
        if isinstance(m, PreTrainedModel) and not any(_contains(f, m) for f in found):
            found.append(m)
    return found


def _contains(outer: nn.Module, inner: nn.Module) -> bool:
    return any(m is inner for m in outer.modules())


def _dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ConfigError(f"FSDP2Strategy: {name!r} is no torch dtype (use bfloat16, float16 or float32)")
    return value


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 data parallelism over all processes (see the module docstring).

    Args:
        activation_checkpointing: recompute each decoder layer in the backward pass (Hugging Face's
            ``gradient_checkpointing_enable``, which keeps parameter names unchanged).
        param_dtype: compute dtype of the sharded networks (``bfloat16`` on GPUs); None keeps the parameters' own.
        reduce_dtype: dtype of the gradient reduce-scatter (``float32`` keeps reductions exact in bf16 training).
        reshard_after_forward: free each unit's gathered weights after its forward (ZeRO-3); False keeps them until
            the backward (ZeRO-2 style: more memory, fewer all-gathers).
        layer_classes: class names of the blocks to shard one by one; default: the networks' ``_no_split_modules``.
        data_parallel_size: processes that shard the weights (default: all of them).
        tensor_parallel_size: 1 (the suite's modules do not apply tensor parallelism).
        **kwargs: passed to :class:`ModelParallelStrategy` (``save_distributed_checkpoint``, ``timeout``...).
    """

    def __init__(
        self,
        activation_checkpointing: bool = False,
        param_dtype: str | None = None,
        reduce_dtype: str | None = None,
        reshard_after_forward: bool = True,
        layer_classes: list[str] | None = None,
        data_parallel_size: int | Literal["auto"] = "auto",
        tensor_parallel_size: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_parallel_size=data_parallel_size, tensor_parallel_size=tensor_parallel_size, **kwargs)
        self.activation_checkpointing = activation_checkpointing
        self.param_dtype, self.reduce_dtype = _dtype(param_dtype), _dtype(reduce_dtype)
        self.reshard_after_forward = reshard_after_forward
        self.layer_classes = layer_classes
        self._replicated: list[nn.Parameter] = []

    # ----------------------------------------------------------------------------------------------- mesh
    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":  # Lightning's "auto" would put the processes on the TP axis
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    # ------------------------------------------------------------------------------------------- sharding
    def shard(self, module: nn.Module, extra: Sequence[nn.Module] = ()) -> None:
        """Shard every transformer network of ``module`` (and ``extra`` networks held outside it); called from
        the module's ``configure_model``. Idempotent: a network already sharded is left as it is."""
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

        mesh = self.device_mesh["data_parallel"]
        inner = MixedPrecisionPolicy(param_dtype=self.param_dtype, reduce_dtype=self.reduce_dtype)
        outer = MixedPrecisionPolicy(param_dtype=self.param_dtype, reduce_dtype=self.reduce_dtype,
                                     output_dtype=torch.float32 if self.param_dtype is not None else None)
        for net in [*transformer_networks(module), *extra]:
            if any(isinstance(m, FSDPModule) for m in net.modules()):
                continue
            if self.activation_checkpointing and getattr(net, "supports_gradient_checkpointing", False):
                net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            classes = decoder_layer_classes(net, self.layer_classes)
            for layer in [m for m in net.modules() if type(m) in classes]:
                fully_shard(layer, mesh=mesh, mp_policy=inner, reshard_after_forward=self.reshard_after_forward)
            fully_shard(net, mesh=mesh, mp_policy=outer, reshard_after_forward=self.reshard_after_forward)
            keep_output_capture(net)
            if _is_causal_lm(net):  # the suite's decoder-then-head pass is one forward of the sharded root
                setattr(net, LM_ENTRY, MethodType(_hidden_and_logits, net))
                register_fsdp_forward_method(net, LM_ENTRY)

    def setup(self, trainer: Any) -> None:
        super().setup(trainer)
        from torch.distributed.tensor import DTensor

        self._replicated = [p for p in self.lightning_module.parameters() if not isinstance(p, DTensor)]
        self.precision_plugin.clip_grad_by_norm = self.clip_grad_by_norm  # sharded and replicated gradients
        for opt in self.optimizers:
            step_mixed_groups_per_tensor(opt)
        if self.world_size > 1:
            with torch.no_grad():
                for p in self._replicated:  # every rank starts from rank 0's copy, as DDP does
                    dist.broadcast(p.data, src=0)

    def post_backward(self, closure_loss: torch.Tensor) -> None:
        """Average the replicated parameters' gradients over the ranks (the sharded ones are reduce-scattered by
        FSDP). A gradient that no rank produced stays None, so the optimizer skips that parameter as it would."""
        super().post_backward(closure_loss)
        params = [p for p in self._replicated if p.requires_grad]
        if self.world_size <= 1 or not params:
            return
        device = self.root_device
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
        dist.all_reduce(has)
        live = [p for p, h in zip(params, has.tolist(), strict=True) if h > 0]
        if not live:
            return
        for p in live:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1).to(torch.float32) for p in live])  # one collective for all of them
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in live:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n

    def clip_grad_by_norm(self, optimizer: torch.optim.Optimizer, clip_val: float) -> None:
        """``--trainer.gradient_clip_val``: scale all gradients so that their global L2 norm is at most ``clip_val``.
        The norm sums the squares of every rank's shards (one all-reduce) and, once, of the replicated gradients
        (equal on every rank after :meth:`post_backward`); ``clip_grad_norm_`` cannot mix the two kinds."""
        from torch.distributed.tensor import DTensor

        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        sharded = torch.zeros((), dtype=torch.float32, device=self.root_device)
        whole = torch.zeros((), dtype=torch.float32, device=self.root_device)
        for g in grads:
            if isinstance(g, DTensor):
                sharded += g.to_local().float().pow(2).sum()
            else:
                whole += g.float().pow(2).sum()
        if self.world_size > 1:
            dist.all_reduce(sharded)
        total = (sharded + whole).sqrt()
        scale = (clip_val / (total + 1e-6)).clamp(max=1.0)
        for g in grads:
            (g.to_local() if isinstance(g, DTensor) else g).mul_(scale.to(g.dtype))

    # ---------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """A distributed checkpoint folder, written beside its target under a temporary name and renamed into place
        once every rank has written its shard (the previous checkpoint stays whole until then)."""
        if not self._save_distributed_checkpoint or storage_options is not None or "://" in str(filepath):
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        path = Path(self.broadcast(str(filepath)))
        token = self.broadcast(uuid.uuid4().hex[:8])
        tmp = path.with_name(f".{path.name}.{token}.tmp")
        try:
            super().save_checkpoint(checkpoint, tmp)
            self.barrier()
            if self.global_rank == 0:
                replace_folder(tmp, path)
        finally:
            if self.global_rank == 0 and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        self.barrier()

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Restore a distributed checkpoint folder into the sharded module and optimizers. Parameters missing from
        the folder must be frozen ones (a LoRA run saves only what trains); they keep the values the module was
        built with."""
        from lightning.fabric.strategies.model_parallel import _is_sharded_checkpoint

        path = Path(self.broadcast(str(checkpoint_path)))
        if not _is_sharded_checkpoint(path):
            return super().load_checkpoint(path, weights_only=weights_only)
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        saved = saved_keys(path, "state_dict")
        model_state = get_model_state_dict(self.model)
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        missing = sorted(k for k in model_state if k not in saved and k in trainable)
        if missing:
            raise ConfigError(f"{path} lacks trained parameters of this model (first: {missing[0]}): "
                              "is it a checkpoint of another model?")
        model_state = {k: v for k, v in model_state.items() if k in saved}
        state = {"state_dict": model_state}
        dcp.load(state, checkpoint_id=path)
        set_model_state_dict(self.model, state["state_dict"], options=StateDictOptions(strict=False))
        for idx, opt in enumerate(self.optimizers):
            key = f"optimizer_{idx}"
            stored = saved_keys(path, key)
            opt_state = get_optimizer_state_dict(self.model, opt)
            # A parameter that had not stepped when the checkpoint was written (a multitask head whose task had not
            # come up yet) has no state there, and gets none now, as in the uninterrupted run.
            opt_state["state"] = {fqn: st for fqn, st in opt_state["state"].items()
                                  if all(f"state.{fqn}.{k}" in stored for k in st)}
            holder = {key: opt_state}
            dcp.load(holder, checkpoint_id=path)
            set_optimizer_state_dict(self.model, opt, optim_state_dict=holder[key],
                                     options=StateDictOptions(cpu_offload=True, strict=False))
        from lightning.fabric.utilities.load import _METADATA_FILENAME

        return torch.load(path / _METADATA_FILENAME, map_location="cpu", weights_only=True)


def step_mixed_groups_per_tensor(optimizer: torch.optim.Optimizer) -> None:
    """The multi-tensor (``foreach``, ``fused``) kernels of torch's optimizers cannot take sharded DTensors and plain
    tensors in one call, which a parameter group holding both (a network's matrices and a replicated head's) makes
    them do on a GPU: such groups step one tensor at a time. Groups of one kind keep their kernels."""
    from torch.distributed.tensor import DTensor

    for group in optimizer.param_groups:
        if len({isinstance(p, DTensor) for p in group["params"]}) > 1:
            group["foreach"] = False
            if group.get("fused"):
                group["fused"] = False


def keep_output_capture(net: nn.Module) -> None:
    """Let a sharded Hugging Face model still return what it records (``output_attentions``,
    ``output_hidden_states``). ``fully_shard`` swaps each sharded module's class for a subclass (``BertModel`` ->
    ``FSDPBertModel``), and transformers (5.x) finds a model's recordable outputs (``_can_record_outputs``) by its
    class's name, which the subclass lacks: its forward would return ``attentions=None``. Registering each model under
    its new class, as ``PreTrainedModel.__init__`` does under the old one, restores them. No-op where transformers has
    no such registry."""
    from transformers import PreTrainedModel

    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:  # older transformers: the modules return their outputs themselves
        return
    for m in net.modules():
        if isinstance(m, PreTrainedModel) and not _CAN_RECORD_REGISTRY.get(m):
            _CAN_RECORD_REGISTRY[m] = m._can_record_outputs


def _is_causal_lm(net: nn.Module) -> bool:
    get_decoder, get_head = getattr(net, "get_decoder", None), getattr(net, "get_output_embeddings", None)
    return callable(get_decoder) and callable(get_head) and get_head() is not None and get_decoder() is not net


def saved_keys(path: Path, prefix: str) -> set[str]:
    """The keys under ``prefix`` (``state_dict``, ``optimizer_0``) that the distributed checkpoint ``path`` holds."""
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(path)).read_metadata()
    head = f"{prefix}."
    return {k[len(head):] for k in meta.state_dict_metadata if k.startswith(head)}


def replace_folder(tmp: Path, path: Path) -> None:
    """Move the complete folder ``tmp`` to ``path``, replacing whatever is there (a file or a folder) only once the
    new one is ready; both sit in one folder, so each rename is atomic."""
    old = None
    if path.exists() or path.is_symlink():
        old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


class Shardable:
    """LightningModule mixin: under :class:`FSDP2Strategy`, ``configure_model`` shards the module's transformer
    networks (plus :meth:`unregistered_networks`). Other strategies leave the module as built."""

    supports_sharding = True

    def unregistered_networks(self) -> list[nn.Module]:
        """Networks the module uses but does not register as submodules (e.g. DPO's frozen reference copy)."""
        return []

    def configure_model(self) -> None:
        trainer = getattr(self, "_trainer", None)
        strategy = trainer.strategy if trainer is not None else None
        if isinstance(strategy, ModelParallelStrategy):
            check_sharding(self, strategy)
            strategy.shard(self, self.unregistered_networks())


def unsupported(strategy: str) -> ConfigError:
    return ConfigError(f"{strategy} is not supported by this suite (never verified with its objectives); shard with "
                       f"FSDP2: --config {PRESET}")


def check_strategy_name(value: Any) -> None:
    """Refuse, from the parsed config alone, a DeepSpeed or FSDP1 strategy (a registry name such as ``fsdp`` or
    ``deepspeed_stage_2``, or a ``class_path``), before Lightning builds it or any model is built."""
    name = value if isinstance(value, str) else getattr(value, "class_path", None) or ""
    short = name.rsplit(".", 1)[-1]
    if short.startswith(("deepspeed", "DeepSpeed")) or short in ("fsdp", "fsdp_cpu_offload", "FSDPStrategy"):
        raise unsupported(short)


def check_sharding(module: Any, strategy: Any) -> None:
    """One-line refusal, before any work, of a sharded strategy the suite cannot run ``module`` under."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    name = type(module).__name__
    if isinstance(strategy, DeepSpeedStrategy | FSDPStrategy):
        raise unsupported(type(strategy).__name__)
    if isinstance(strategy, ModelParallelStrategy):
        if not isinstance(strategy, FSDP2Strategy):
            raise ConfigError(f"{type(strategy).__name__}: the suite shards through core.strategies.FSDP2Strategy "
                              f"(--config {PRESET})")
        if not getattr(module, "supports_sharding", False):
            reason = getattr(module, "sharding_refusal", "it has no transformer to shard")
            raise ConfigError(f"{name} cannot be trained sharded: {reason}; use ddp (configs/trainer/ddp.yaml)")
