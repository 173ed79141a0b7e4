"""An exclusive lock on a folder, so two runs never write into one workdir (or one eval folder).

Mechanism: ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``<folder>/.lock``, whose content names the holder
(pid, host, start time, command). The kernel drops a flock when its holder dies in any way, SIGKILL
and power loss included, so a lock is never stale while the holder lives and always free once it is
dead: a leftover file with a dead holder's name is simply taken over. An O_CREAT|O_EXCL lock file
would have to guess staleness from the pid (reused pids, other hosts) and needs a second lock to
make its take-over race-free; flock has neither problem on local file systems (on NFS, Linux maps
flock onto NFS byte-range locks). Where fcntl is missing (Windows) the folder is not locked, with a
warning.

    with hold(workdir):          # raises LockedError naming the holder when another process has it
        ...                      # released on exit, and by the kernel if the process dies
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from typing import Any, Dict, Iterator, Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
LOCK_NAME = ".lock"


class LockedError(RuntimeError):
    """Another live process holds the folder's lock."""


def _holder_info() -> Dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(sys.argv)[:300]}


def _read_holder(fd: int) -> Optional[Dict[str, Any]]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 65536)
        holder = json.loads(data.decode()) if data else None
        return holder if isinstance(holder, dict) else None
    except (OSError, ValueError):
        return None


def _describe(holder: Optional[Dict[str, Any]]) -> str:
    if not holder:
        return "another process (its lock file names no holder yet)"
    return f"pid {holder.get('pid')} on host {holder.get('host')} (since {holder.get('started')})"


def _acquire(path: str) -> int:
    """Open and flock `path`; the locked file descriptor. Retries when the file was replaced meanwhile."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            folder = os.path.dirname(path)
            raise LockedError(f"{folder} is in use by {_describe(holder)}; wait for that run to end, stop it, "
                              f"or use another folder (the lock file is {path})") from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the previous holder may have unlinked the file between our open and flock
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def hold(folder: str, enabled: bool = True) -> Iterator[None]:
    """Hold the exclusive lock of `folder` (created if needed) for the duration of the block.

    `enabled=False` (the non-zero ranks of a torchrun job) makes it a no-op."""
    if not enabled:
        yield
        return
    if fcntl is None:  # pragma: no cover - non-POSIX
        log.warning("no fcntl on this platform: %s is not locked against concurrent runs", folder)
        yield
        return
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_NAME)
    fd = _acquire(path)
    try:
        previous = _read_holder(fd)
        if previous and previous.get("pid") != os.getpid():
            log.info("taking over the lock of %s, which has ended", _describe(previous))
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(_holder_info()).encode())
        os.fsync(fd)
        yield
    finally:
        try:
            os.unlink(path)  # while still locked: a waiting opener re-checks the inode (see _acquire)
        except OSError:
            pass
        os.close(fd)


@contextlib.contextmanager
def hold_on_main(folder: str, info: Any) -> Iterator[None]:
    """The lock of `folder` taken by rank 0 only (info: distributed.DistInfo); when rank 0 cannot take
    it, every rank raises the same LockedError (no rank is left waiting in a collective)."""
    from .distributed import broadcast_object

    with contextlib.ExitStack() as stack:
        error = None
        if info.is_main:
            try:
                stack.enter_context(hold(folder))
            except LockedError as e:
                error = str(e)
        error = broadcast_object(error, info)
        if error is not None:
            raise LockedError(error)
        yield
