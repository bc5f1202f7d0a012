"""Reading records from JSONL / JSON / Parquet files or a Hugging Face dataset, each with its location.

Every record comes with a ``where`` string (``path:line`` or ``path:row N`` or ``dataset[split] row N``) so
that validation errors can name the exact place.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.errors import DataError

Record = tuple[dict[str, Any], str]  # (row, where)


def as_list(files: list[str] | str | None) -> list[str]:
    if files is None:
        return []
    return [files] if isinstance(files, str) else list(files)


def read_file(path: str | Path) -> Iterator[Record]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffix in (".jsonl", ".jsonl.gz"):
        yield from _read_jsonl(path)
    elif suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of objects, got {type(rows).__name__}")
        for i, row in enumerate(rows):
            yield _check_object(row, f"{path}: item {i}")
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield row, f"{path}: row {i}"
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r} (expected .jsonl, .json or .parquet)")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSONL file (``.gz`` too).

    Raises :class:`DataError` naming ``path:line`` for malformed JSON or a line that is not an object.
    """
    path = Path(path)
    opener = __import__("gzip").open if path.suffix == ".gz" else open
    try:
        handle = opener(path, "rt", encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    with handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            yield lineno, _check_object(row, f"{path}:{lineno}")[0]


def _read_jsonl(path: Path) -> Iterator[Record]:
    for lineno, row in iter_jsonl(path):
        yield row, f"{path}:{lineno}"


def _check_object(row: Any, where: str) -> Record:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row, where


def read_hf_dataset(name: str, split: str) -> Iterator[Record]:
    """A dataset saved with ``save_to_disk``, a local dataset folder / file, or a hub name (if online)."""
    import datasets

    path = Path(name)
    if path.is_dir() and (path / "dataset_dict.json").exists():
        ds = datasets.load_from_disk(str(path))[split]
    elif path.is_dir() and (path / "dataset_info.json").exists():
        ds = datasets.load_from_disk(str(path))
    else:
        ds = datasets.load_dataset(name, split=split)
    for i, row in enumerate(ds):
        yield row, f"{name}[{split}] row {i}"


def read_records(files: list[str] | str | None, hf_dataset: str | None = None, split: str = "train") -> list[Record]:
    out: list[Record] = []
    for f in as_list(files):
        out.extend(read_file(f))
    if hf_dataset is not None:
        out.extend(read_hf_dataset(hf_dataset, split))
    return out
