"""One writer per job: a lock file beside the work it guards.

``with hold(directory, what):`` runs its block while holding ``<directory>/.lock``; another process asking
for the same lock WAITS (printing once who holds it) and then continues. The drivers take one lock per job
of the store (an slt or nets branch, an imp trunk) and re-check what is finished only once they hold it, so
two identical runs into one ``--out`` never compute or record a job twice — the second waits for the first
job, finds it finished, and moves on — while runs split with ``--only`` into one directory lock different
jobs and run side by side. Each view ``<out>/<name>/`` is rebuilt under its own lock.

The lock is an ``flock`` on the file, which the kernel releases when its holder dies (a killed run never
leaves a lock that blocks the next one); the file records the holder's host and pid for the waiting
message, and is removed on release. So a lock file left by a killed run (its pid dead) is simply taken
over; a live holder on this or another host is waited for, and the message names it and the file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK_FILE = ".lock"

__all__ = ["LOCK_FILE", "describe_holder", "hold"]


def _holder(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def describe_holder(holder: dict) -> str:
    """``pid 123 on host h (since 2024-…)`` from a lock file's record."""
    since = holder.get("since")
    when = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if since else ""
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{when}"


def _try_lock(path: Path) -> int | None:
    """An fd holding the flock of the file now at ``path`` (created if missing), or None if another open
    file holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed the file between our open and our lock: lock the new one


@contextlib.contextmanager
def hold(
    directory: str | Path,
    what: str,
    notify: Callable[[str], None] | None = None,
    poll: float = 0.5,
) -> Iterator[None]:
    """Hold ``<directory>/.lock`` for the block (``directory`` is created); wait while another process
    holds it, telling ``notify`` once (holder's host and pid, the lock file)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    told = False
    while True:
        fd = _try_lock(path)
        if fd is not None:
            break
        if not told and notify is not None:
            holder = _holder(path)
            notify(
                f"{what} is being run by {describe_holder(holder)}; waiting for it "
                f"(lock {path}; delete it only if that process is gone)"
            )
            told = True
        time.sleep(poll)
    try:
        record = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "what": what}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # under the lock: a waiter re-opens the path and locks a new file
        os.close(fd)
