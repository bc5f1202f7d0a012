"""Resumable, atomic runs of the offline pipelines (RS and MCTS pairs, critiques): chunks written as parts.

The inputs are processed in chunks of ``chunk_size``; each finished chunk's records are written atomically to
``<out>.parts/partNNNNN.jsonl``; a rerun skips the chunks already there, then assembles ``out`` atomically and
removes the parts. Records with an ``error`` field go to ``<out>.failures.jsonl`` instead (never silently dropped);
``<out>.parts/meta.json`` (settings plus the inputs' fingerprint) guards against resuming with other inputs or
settings.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from core.errors import DataError
from core.io import atomic_path, atomic_write_text, jsonl_text, parts_dir

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
    start = time.perf_counter()
    meta_json = json.dumps({**(meta or {}), "prompts": fingerprint, "chunk_size": chunk_size}, sort_keys=True)
    folder = parts_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    meta_file = folder / "meta.json"
    if meta_file.is_file():
        if meta_file.read_text(encoding="utf-8") != meta_json:
            raise DataError(
                f"{folder}: left by an interrupted run with other prompts or settings; delete it to start afresh"
            )
    else:
        atomic_write_text(meta_file, meta_json)
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
