"""Per-row tensors of a frozen model, computed once (each rank a shard) and kept on disk as safetensors.

Shared by DPO's precomputed reference log-probs (:mod:`lightning_modules.dpo.reference`) and MSD's teacher outputs
(:mod:`lightning_modules.msd.teacher`):
the caller names the file by a key over everything the values depend on, so a changed model or dataset is a miss,
never a stale hit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import Tensor

from core.io import atomic_path


def gather_rows(part: Tensor) -> Tensor:
    """The whole tensor on every rank, from each rank's part that holds its own rows and zeros elsewhere."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return part
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, part.cpu())
    return torch.stack(parts).sum(0)  # each row was filled by exactly one rank


def save_tensor(path: Path, name: str, value: Tensor, metadata: dict[str, str] | None = None) -> None:
    """Write ``{name: value}`` to ``path`` atomically (a temporary file, then a rename)."""
    with atomic_path(path) as tmp:
        save_file({name: value.contiguous()}, str(tmp), metadata=metadata)


def load_or_compute(strategy: Any, path: Path, name: str, compute: Callable[[], Tensor],
                    metadata: dict[str, str] | None = None) -> tuple[Tensor, bool]:
    """``(tensor, read from disk)``: the tensor ``name`` of ``path`` when the file exists (rank 0 decides and reads,
    then broadcasts, so ranks never disagree), else ``compute()`` on every rank (it gathers its shards itself), which
    rank 0 saves; every rank waits for the file before going on."""
    if strategy.broadcast(path.exists(), src=0):
        value = load_file(str(path))[name] if strategy.is_global_zero else None
        return strategy.broadcast(value, src=0), True
    value = compute()
    if strategy.is_global_zero:
        save_tensor(path, name, value, metadata)
    strategy.barrier("shard-cache")
    return value, False
