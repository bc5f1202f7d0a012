"""MSD under FSDP2: the global batch norm of the replicated image encoder, and the early refusal of learned weights
(the sharded runs themselves: ``tests/sharded``)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from core.errors import ConfigError
from core.strategies import FSDP2Strategy, check_sharding
from lightning_modules.msd.classifier import GlobalBatchNorm2d, globalise_batch_norm
from lightning_modules.msd.module import MSD

ROOT = Path(__file__).resolve().parents[2]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())


def _rank(rank: int, port: int, x: torch.Tensor, ref: dict[str, torch.Tensor]) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        net = _net()
        assert globalise_batch_norm(net) == 1 and isinstance(net[1], GlobalBatchNorm2d)
        out = net(x.chunk(2)[rank])
        (out.square().mean() / 2).backward()  # each rank's half of the mean loss
        for p in net.parameters():
            dist.all_reduce(p.grad)
        torch.testing.assert_close(out, ref["out"].chunk(2)[rank], rtol=1e-5, atol=1e-6)
        for p, g in zip(net.parameters(), ref["grads"], strict=True):
            torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(net[1].running_mean, ref["running_mean"])
        torch.testing.assert_close(net[1].running_var, ref["running_var"])
    finally:
        dist.destroy_process_group()


def test_global_batch_norm_on_two_processes_equals_one_process_on_the_whole_batch() -> None:
    x = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    net = _net()
    out = net(x)
    out.square().mean().backward()
    ref = {"out": out.detach(), "grads": [p.grad for p in net.parameters()],
           "running_mean": net[1].running_mean, "running_var": net[1].running_var}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(port, x, ref), nprocs=2)


def test_global_batch_norm_is_plain_batch_norm_on_one_process_and_keeps_the_state_dict() -> None:
    a, b = _net(), _net()
    keys = set(b.state_dict())
    globalise_batch_norm(b)
    assert set(b.state_dict()) == keys
    x = torch.randn(4, 3, 6, 6)
    torch.testing.assert_close(a(x), b(x))


def test_learned_weighting_is_refused_under_fsdp2_in_one_line_and_the_others_are_not() -> None:
    with pytest.raises(ConfigError, match="weighting=learned needs the whole student"):
        check_sharding(MSD(weighting="learned"), FSDP2Strategy())
    check_sharding(MSD(weighting="instance"), FSDP2Strategy())
