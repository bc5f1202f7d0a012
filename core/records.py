"""Reading records from JSONL / JSON / Parquet files or a Hugging Face dataset, each with its location.

Every record comes with a ``where`` string (``path:line`` or ``path:row N`` or ``dataset[split] row N``) so
that validation errors can name the exact place.
"""

from __future__ import annotations

import codecs
import gzip
import json
import re
from collections.abc import Iterable, Iterator
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
            rows = json.loads(read_text(path))
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


# A byte that is not UTF-8, as the "surrogateescape" error handler decodes it (U+DC80..U+DCFF).
_BAD_BYTE = re.compile("[\udc80-\udcff]")


def _not_utf8(path: Path, lineno: int, column: int, byte: int) -> DataError:
    return DataError(f"{path}:{lineno}: not UTF-8 text (byte 0x{byte:02x} at column {column}); save the file as UTF-8")


# The longest line (in characters, line ending left out) that the line readers accept; set it (or pass
# ``max_line_chars``) for data with longer lines. A longer line is refused before it is read whole.
MAX_LINE_CHARS = 10_000_000


def iter_lines(
    path: str | Path, newline: str | None = None, max_line_chars: int | None = None
) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` for each line of a UTF-8 text file (``.gz`` too), line endings kept.

    A UTF-8 byte-order mark at the start is dropped. A byte that is not UTF-8 raises :class:`DataError` naming
    ``path:line`` (never a bare ``UnicodeDecodeError``). ``newline`` is :func:`open`'s (``""`` for CSV readers).
    A line over ``max_line_chars`` (default :data:`MAX_LINE_CHARS`) raises :class:`DataError` naming ``path:line``.
    """
    limit = MAX_LINE_CHARS if max_line_chars is None else max_line_chars
    path = Path(path)
    try:
        if path.suffix == ".gz":
            handle = gzip.open(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline=newline)
        else:
            handle = open(path, encoding="utf-8-sig", errors="surrogateescape", newline=newline)  # noqa: SIM115
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    with handle:
        for lineno, line in enumerate(iter(lambda: handle.readline(limit + 3), ""), start=1):  # + "\r\n" + one
            if len(line.rstrip("\r\n")) > limit:
                raise DataError(f"{path}:{lineno}: line is over {limit} characters (core.records.MAX_LINE_CHARS)")
            bad = _BAD_BYTE.search(line)
            if bad is not None:
                raise _not_utf8(path, lineno, bad.start() + 1, ord(bad.group()) - 0xDC00)
            yield lineno, line


def read_text(path: str | Path) -> str:
    """The whole of a UTF-8 text file (a leading byte-order mark dropped); :class:`DataError` naming ``path:line``
    for a byte that is not UTF-8 or a file that cannot be read."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        raise _not_utf8(path, data.count(b"\n", 0, e.start) + 1, e.start - line_start + 1, data[e.start]) from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSONL file (``.gz`` too; a leading BOM is dropped).

    Raises :class:`DataError` naming ``path:line`` for text that is not UTF-8, malformed JSON or a line that is not
    an object.
    """
    for lineno, line in iter_lines(path):
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


def sources_text(files: list[str] | str | None, hf_dataset: str | None = None, split: str = "train") -> str:
    """Where records come from, for messages: the files, then ``dataset[split]``, comma-separated."""
    names = [str(f) for f in as_list(files)] + ([f"{hf_dataset}[{split}]"] if hf_dataset is not None else [])
    return ", ".join(names) or "no input"


def no_usable_records(what: str, source: str, n_read: int, counts: dict[str, int]) -> DataError:
    """The error for a split left empty: nothing was read from ``source``, or validation dropped every row
    (``counts``: why, as the data module counted it; ``kept`` is left out)."""
    if n_read == 0:
        return DataError(f"{source}: no {what}: no records were read (an empty file?)")
    why = ", ".join(f"{k}: {v}" for k, v in counts.items() if v and k != "kept") or "none counted"
    return DataError(f"{source}: no usable {what} left after validation: all {n_read} records dropped ({why})")


def inferred_class_count(labels: Iterable[tuple[int, str]], field: str, fix: str) -> int:
    """The classes ``0..K-1`` of integer training labels (``(label, where)`` pairs): K = the highest label + 1.

    Every class below the highest must occur, so that one stray label (``7`` among ``0`` and ``1``) cannot make an
    8-class model silently: a :class:`DataError` names the (first) row of the highest label, the label and the
    classes that never occur; ``fix`` says how to declare classes that training lacks.
    """
    first: dict[int, str] = {}
    for label, where in labels:
        first.setdefault(int(label), where)
    top = max(first)
    missing = [k for k in range(top) if k not in first]
    if missing:
        more = ", ..." if len(missing) > 8 else ""
        seen = ", ".join(map(str, sorted(first)[:8])) + (", ..." if len(first) > 8 else "")
        raise DataError(f"{first[top]}: field {field!r} is {top}, but class(es) {', '.join(map(str, missing[:8]))}"
                        f"{more} never occur in the training labels ({seen}): a stray label? ({fix})")
    return top + 1


def read_records(files: list[str] | str | None, hf_dataset: str | None = None, split: str = "train") -> list[Record]:
    out: list[Record] = []
    for f in as_list(files):
        out.extend(read_file(f))
    if hf_dataset is not None:
        out.extend(read_hf_dataset(hf_dataset, split))
    return out
