"""An exclusive lock on an output path, so that two runs never write into the same output at once.

:func:`output_lock` takes a non-blocking ``fcntl.flock`` on ``<path>.lock`` (beside the output file or folder) and
writes the holder's process id, host, command and start time into it. A second run that wants the same output stops
at once with a one-line :class:`~core.errors.ConfigError` naming that process; it writes nothing. The lock belongs
to the open file, so the kernel releases it when the holder ends, however it ends: a lock file left by a killed run
never blocks the next one (it is taken over and rewritten). On a normal exit the lock file is removed.

Within one thread the lock is re-entrant: a command may lock its output and call a writer that locks the same output
again (the critiques command around :func:`pipelines.resumable.run_resumable`). Another thread or process is refused.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking
    fcntl = None  # type: ignore[assignment]

__all__ = ["lock_path", "output_lock"]

_COMMAND_CHARS = 160  # how much of the holder's command line the lock file (and the error) shows
_held: dict[tuple[str, int], int] = {}  # (lock file, thread) -> depth of this thread's nested output_lock calls
_held_guard = threading.Lock()


def lock_path(path: str | Path) -> Path:
    """The lock file of the output ``path``: ``<path>.lock``, beside it."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


def _command() -> str:
    argv = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
    text = " ".join(shlex.join(argv).split())  # one line
    return text if len(text) <= _COMMAND_CHARS else text[: _COMMAND_CHARS - 1] + "…"


def _holder(fd: int) -> str:
    """Who holds the lock, from what it wrote into the lock file ("another process" if that cannot be read)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"process {int(info['pid'])} on {info['host']} ({info['command']}) since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):  # written this very moment, or not by output_lock
        return "another process"


def _acquire(path: Path, lock: Path, command: str | None) -> int:
    """Open and lock ``lock``; return its descriptor, or raise :class:`ConfigError` naming the holder."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ConfigError(f"{path}: cannot create the lock file {lock}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ConfigError(
                f"{path}: is being written by {holder}; wait for it to finish or choose another output"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the holder we waited on may have removed the file while we opened it: lock the one at the path
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command or _command(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info, ensure_ascii=False) + "\n").encode("utf-8"), 0)
    return fd


@contextmanager
def output_lock(path: str | Path, command: str | None = None) -> Iterator[Path]:
    """Hold an exclusive lock on the output ``path`` (a file or folder) for the ``with`` block; yield the lock file.

    Raises :class:`ConfigError` at once, in one line naming the holder's process id, host, command and start time,
    when another process (or thread) holds it. ``command`` (default: this process's command line) is what a refused
    run is told the holder is doing.
    """
    path = Path(path)
    lock = lock_path(path)
    if fcntl is None:  # pragma: no cover - not POSIX
        yield lock
        return
    key = (os.path.realpath(lock), threading.get_ident())
    with _held_guard:
        nested = key in _held
        if nested:
            _held[key] += 1
    if nested:
        try:
            yield lock
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    fd = _acquire(path, lock, command)
    with _held_guard:
        _held[key] = 1
    try:
        yield lock
    finally:
        with _held_guard:
            del _held[key]
        try:
            lock.unlink(missing_ok=True)  # while still locked, so the next run locks a fresh file
        finally:
            os.close(fd)
