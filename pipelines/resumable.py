"""Resumable, atomic runs of the offline pipelines (RS and MCTS pairs, critiques): chunks written as parts.

The inputs are processed in chunks of ``chunk_size``; each finished chunk's records are written atomically to
``<out>.parts/partNNNNN.jsonl``; a rerun skips the chunks already there, then assembles ``out`` atomically and
removes the parts. Records with an ``error`` field go to ``<out>.failures.jsonl`` instead (never silently dropped).

Parts are reused only under their settings record: ``<out>.parts/meta.json`` (settings plus the inputs'
fingerprint), written atomically before any part. Parts without it (left by a run that crashed or raced another
before writing it, or by something else) are discarded with a warning and made afresh; parts whose record differs
from this run's settings are refused with a one-line :class:`~core.errors.ConfigError` naming the differing settings
(delete the folder, or rerun with the earlier settings to finish that run). While it runs, the run holds an
exclusive lock on ``out`` (:func:`core.locks.output_lock`): a second run into the same output stops at once with an
error naming the first, and writes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from core.errors import ConfigError, DataError
from core.io import atomic_path, atomic_write_text, jsonl_text, parts_dir
from core.locks import output_lock

R = TypeVar("R")  # the input record type


def failures_path(out: str | Path) -> Path:
    """Where inputs whose generation failed are recorded: ``<out>.failures.jsonl``."""
    out = Path(out)
    return out.with_name(out.name + ".failures.jsonl")


def _write_part(path: Path, text: str) -> None:
    """Write one part atomically (a function of its own so that tests can simulate a kill between parts)."""
    atomic_write_text(path, text)


@dataclass(frozen=True)
class RunReport:
    out: Path
    prompts: int
    pairs: int
    failures: int
    parts: int
    parts_kept: int
    parts_written: int
    seconds: float


def run_resumable(
    records: Sequence[R],
    out: str | Path,
    process: Callable[[Sequence[R]], list[dict[str, Any]]],
    *,
    fingerprint: str,
    chunk_size: int = 64,
    meta: dict[str, Any] | None = None,
    keep: Callable[[dict[str, Any]], bool] | None = None,
) -> RunReport:
    """Run ``process`` chunk by chunk with atomic parts, skipping finished chunks; assemble ``out`` atomically.

    ``process`` returns pair records and failure records (those with an ``error`` field) for its chunk.
    ``meta`` (settings plus the records' fingerprint) must match an earlier interrupted run's to resume it.
    ``fingerprint`` identifies the input records (a hash of their content). ``keep``, if given, sees every record
    of every part in order while ``out`` is assembled; a record it returns False for goes to neither file (for
    records that only carry counts).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out = Path(out)
    if out.is_dir():
        raise DataError(f"{out}: is a folder; the output must be a file path")
    with output_lock(out):
        return _run_locked(records, out, process, fingerprint, chunk_size, meta, keep)


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 24 else text[:23] + "…"


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The settings that differ, as ``name: old there, new now`` (``missing`` for one recorded on one side only)."""
    return "; ".join(
        f"{key}: {_short(old[key]) if key in old else 'missing'} there, {_short(new[key]) if key in new else 'missing'}"
        " now"
        for key in sorted(old.keys() | new.keys())
        if old.get(key, ...) != new.get(key, ...)
    )


def _open_parts(folder: Path, settings: dict[str, Any]) -> None:
    """Make ``folder`` hold this run's settings record: keep it when equal, refuse it when different, and discard
    parts that have none; the record is written (atomically) before any part."""
    meta_file = folder / "meta.json"
    if meta_file.is_file():
        try:
            recorded = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            recorded = None
        if isinstance(recorded, dict):
            if recorded == settings:
                return
            differ = _differences(recorded, settings)
            raise ConfigError(
                f"{folder}: left by an interrupted run with other prompts or settings ({differ}); delete it to start "
                "afresh, or rerun with those settings to finish that run"
            )
    if folder.is_dir() and any(folder.iterdir()):
        n = sum(1 for _ in folder.glob("part*.jsonl"))
        warnings.warn(
            f"{folder}: {n} part(s) without a readable settings record (meta.json) discarded, not reused: "
            "their settings are unknown",
            stacklevel=3,
        )
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(meta_file, json.dumps(settings, sort_keys=True))


def _run_locked(
    records: Sequence[R],
    out: Path,
    process: Callable[[Sequence[R]], list[dict[str, Any]]],
    fingerprint: str,
    chunk_size: int,
    meta: dict[str, Any] | None,
    keep: Callable[[dict[str, Any]], bool] | None,
) -> RunReport:
    """:func:`run_resumable`'s work, under the output's lock."""
    start = time.perf_counter()
    folder = parts_dir(out)
    # a JSON round trip, so that the settings compare equal to those read back from meta.json (tuples, float keys)
    settings = json.loads(json.dumps({**(meta or {}), "prompts": fingerprint, "chunk_size": chunk_size}))
    _open_parts(folder, settings)
    n_parts = -(-len(records) // chunk_size)
    paths = [folder / f"part{i:05d}.jsonl" for i in range(n_parts)]
    kept = written = 0
    for i, path in enumerate(paths):
        if path.is_file():
            kept += 1
            continue
        _write_part(path, jsonl_text(process(records[i * chunk_size : (i + 1) * chunk_size])))
        written += 1
    pairs: list[bytes] = []
    failures: list[bytes] = []
    for path in paths:
        for line in path.read_bytes().splitlines(keepends=True):
            record = json.loads(line)
            if keep is None or keep(record):
                (failures if "error" in record else pairs).append(line)
    for stale in out.parent.glob(f".{out.name}*.tmp"):  # left by a run killed while assembling
        stale.unlink(missing_ok=True)
    fail_path = failures_path(out)
    if failures:
        with atomic_path(fail_path) as tmp:
            tmp.write_bytes(b"".join(failures))
    elif fail_path.is_file():
        fail_path.unlink()
    with atomic_path(out) as tmp, open(tmp, "wb") as handle:
        handle.write(b"".join(pairs))
        handle.flush()
        os.fsync(handle.fileno())
    shutil.rmtree(folder)
    return RunReport(out, len(records), len(pairs), len(failures), n_parts, kept, written, time.perf_counter() - start)
