"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread while the test runs: on a 2-core machine two threads slow down badly under any other load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_dropout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny-bert preset without dropout: runs that must agree draw no random numbers that differ."""
    from core import backbones

    kind, kwargs = backbones.PRESETS["tiny-bert"]
    monkeypatch.setitem(backbones.PRESETS, "tiny-bert",
                        (kind, {**kwargs, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}))
