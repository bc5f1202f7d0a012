"""File helpers shared by datamodules, pipelines and exports: atomic writes (the error classes: :mod:`core.errors`).

A write goes to a temporary beside its target, then is renamed into place, so a killed or failed write never leaves
a half-written result under the real name. A *folder* write never deletes what the suite did not write:

- a new target, or an empty folder, is one rename (atomic);
- a folder that holds only files of a previous write (those its :data:`MANIFEST` lists, or, for writers without a
  manifest, files the new write rewrites or its ``owns`` claims) is swapped whole: two renames, so for an instant
  between them the folder is absent (a crash there leaves the old folder as ``.<name>.<hex>.old`` beside it), then
  the old one is removed;
- a folder that also holds other files (yours) keeps them: each written file is renamed into place on its own
  (each file atomic, the folder as a whole not), the manifest last, then the files the previous write listed and this
  one no longer writes are removed;
- any other non-empty folder is refused, unless ``overwrite``: then only the files the write produces replace
  files of the same name. A file where a folder is to go (or the reverse) is always refused.

Errors the user can act on (a refused folder, a read-only or impossible output place) are :class:`ConfigError`
(one ``error:`` line, exit status 2, in every command), never an OS traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from core.errors import ConfigError

MANIFEST = "lm_suite_files.json"
"""The file a manifest-keeping folder write (the exports) adds: the files it wrote, so a later write knows them."""

NEW_FOLDER_HINT = "choose a new or empty folder"


@contextmanager
def atomic_path(path: str | Path, *, overwrite: bool = False, manifest: bool = False,
                owns: Callable[[str], bool] | None = None, hint: str = NEW_FOLDER_HINT) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write a file or folder into; on success it replaces ``path``.

    On any error the temporary is removed and ``path`` is left as it was. A folder replaces an existing folder only
    as the module docstring says (``overwrite``: replace same-named files in a folder the suite did not write;
    ``manifest``: record the files written in :data:`MANIFEST` and recognise earlier writes by theirs; ``owns``, for a
    writer without a manifest: which relative POSIX paths of an existing folder an earlier write of it made, besides
    those this write makes again; ``hint``: what a refusal tells the user to do). A manifest-keeping write is
    checked before the body runs, so a refused folder costs no work.
    """
    path = Path(path)
    if manifest:
        check_output_folder(path, overwrite=overwrite, hint=hint)
    tmp = _writable_temp(path)
    try:
        yield tmp
        if tmp.is_dir() and not tmp.is_symlink():
            _install_folder(tmp, path, overwrite=overwrite, manifest=manifest, owns=owns, hint=hint)
        else:
            if path.is_dir() and tmp.exists():
                raise ConfigError(f"{path} is a folder: cannot write a file there")
            _replace(tmp, path)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def check_output_folder(path: str | Path, *, overwrite: bool = False, hint: str = NEW_FOLDER_HINT) -> None:
    """Refuse (:class:`ConfigError`) ``path`` as the target of a manifest-keeping folder write: a file, or a non-empty
    folder with no :data:`MANIFEST` (no earlier write of the suite) unless ``overwrite``. Reads only: call it before
    long work (loading a checkpoint, training) to fail early."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ConfigError(f"{path} is a broken link, not a folder")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} is a file, not a folder: {hint}")
    if path.is_dir() and not overwrite and _manifest_files(path) is None and _non_empty(path):
        raise ConfigError(f"{path} is a non-empty folder that lm-suite did not write (no {MANIFEST}): {hint}")


def writable_folder(folder: str | Path) -> Path:
    """``folder``, created if missing; :class:`ConfigError` (one line) if it cannot be created or written into."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".lm_suite_probe.{uuid.uuid4().hex[:8]}"
        probe.mkdir()
        probe.rmdir()
    except OSError as err:
        raise ConfigError(f"cannot write into the folder {path}: {err.strerror or err}") from err
    return path


def _non_empty(folder: Path) -> bool:
    try:
        return any(True for _ in os.scandir(folder))
    except OSError as err:
        raise ConfigError(f"cannot read {folder}: {err.strerror or err}") from err


def _writable_temp(path: Path) -> Path:
    """A fresh temporary name beside ``path``, after making sure its folder exists and can be written into."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as err:
        raise ConfigError(f"cannot create the folder of {path}: {err.filename or path.parent} is a file") from err
    except OSError as err:
        raise ConfigError(f"cannot create the folder of {path}: {err.strerror or err}") from err
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:  # probe: a read-only folder is one line here, not a traceback from deep inside the writer
        tmp.mkdir()
        tmp.rmdir()
    except OSError as err:
        raise ConfigError(f"cannot write into {path.parent}: {err.strerror or err}") from err
    return tmp


def _replace(src: Path, dst: Path) -> None:
    try:
        os.replace(src, dst)
    except OSError as err:
        if not (src.exists() or src.is_symlink()):
            raise  # the writer wrote nothing: a bug of the writer, not of the target
        raise ConfigError(f"cannot write {dst}: {err.strerror or err}") from err


def _tree(folder: Path) -> tuple[set[str], set[str]]:
    """The files (symlinks counted as files) and folders under ``folder``, as relative POSIX paths."""
    files: set[str] = set()
    dirs: set[str] = set()

    def walk(current: Path, rel: str) -> None:
        with os.scandir(current) as entries:
            for entry in entries:
                name = f"{rel}{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    dirs.add(name)
                    walk(Path(entry.path), name + "/")
                else:
                    files.add(name)

    walk(folder, "")
    return files, dirs


def _safe_relative(name: Any) -> bool:
    if not isinstance(name, str) or not name or "\\" in name:
        return False
    p = PurePosixPath(name)
    return not p.is_absolute() and ".." not in p.parts and "." not in p.parts and str(p) == name


def _manifest_files(folder: Path) -> set[str] | None:
    """The files ``folder``'s :data:`MANIFEST` lists (plain relative paths only), or None without a valid one."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("written_by") != "lm-suite" or not isinstance(data.get("files"), list):
        return None
    return {name for name in data["files"] if _safe_relative(name) and name != MANIFEST}


def _ancestors(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _install_folder(tmp: Path, path: Path, *, overwrite: bool, manifest: bool, owns: Callable[[str], bool] | None,
                    hint: str) -> None:
    """Put the folder ``tmp`` in place of ``path`` (module docstring)."""
    new, _ = _tree(tmp)
    if manifest:
        record = {"written_by": "lm-suite", "files": sorted(new)}
        (tmp / MANIFEST).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        new = new | {MANIFEST}
    if not path.exists() and not path.is_symlink():
        _replace(tmp, path)
        return
    if not path.is_dir():
        raise ConfigError(f"{path} is a file, not a folder: {hint}")
    files, dirs = _tree(path)
    if not files and not dirs and not path.is_symlink():
        _replace(tmp, path)  # a folder renames over an empty one
        return
    listed = _manifest_files(path) if manifest else None
    if manifest:
        owned = ({MANIFEST} | listed) & files if listed is not None else set()
    else:
        owned = {f for f in files if f in new or (owns is not None and owns(f))}
    foreign = files - owned
    recognised = not (files or dirs) or (listed is not None if manifest else not foreign)
    if not recognised and not overwrite:
        what = f"no {MANIFEST}" if manifest else "files this write does not produce"
        raise ConfigError(f"{path} is a non-empty folder that lm-suite did not write ({what}): {hint}")
    clobbered = sorted(new & foreign)
    if clobbered and not overwrite:
        raise ConfigError(f"{path} holds {', '.join(clobbered[:3])}, which lm-suite did not write and this write "
                          f"would replace: {hint}")
    for rel in sorted(new):
        if rel in dirs or any(a in files for a in _ancestors(rel)):
            raise ConfigError(f"{path / rel}: a file and a folder of the same name; move it away first")
    needed_dirs = {a for rel in owned | new for a in _ancestors(rel)}
    if not foreign and dirs <= needed_dirs and not path.is_symlink():
        aside = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
        _replace(path, aside)
        try:
            _replace(tmp, path)
        except BaseException:
            os.replace(aside, path)
            raise
        shutil.rmtree(aside, ignore_errors=True)
        return
    for rel in sorted(new - {MANIFEST}) + sorted(new & {MANIFEST}):  # the manifest last
        target = path / rel
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot write {target}: {err.strerror or err}") from err
        _replace(tmp / rel, target)
    for rel in sorted(owned - new):  # written by the previous write, not by this one
        (path / rel).unlink(missing_ok=True)
        for folder in reversed(_ancestors(rel)):
            try:
                (path / folder).rmdir()  # only if now empty
            except OSError:
                break


def parts_dir(out: str | Path) -> Path:
    """Where a resumable pipeline keeps the finished parts of ``out`` until it assembles it: ``<out>.parts/``."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def jsonl_text(records: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
