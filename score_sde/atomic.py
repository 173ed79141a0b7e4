"""Atomic file writes: a temp file beside the target, fsync, rename. A kill never leaves a truncated file."""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb") -> Iterator[IO]:
    """Yield a file to write; on success it replaces `path` (world-readable), on error it vanishes.

    The previous file under `path`, if any, stays intact until the rename; a hard kill may leave a
    hidden `.tmp` file behind, never a truncated `path`.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    except OSError as e:
        raise _naming(e, path) from None
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, tmp):
            raise _naming(e, path) from None  # e.g. ENOSPC from write(): say which file failed
        raise
    _fsync_dir(folder)


def _naming(e: OSError, path: str) -> OSError:
    """The same OS error (same errno, so the same subclass) naming the file being written."""
    return OSError(e.errno, e.strerror, path)


def _fsync_dir(folder: str) -> None:
    """Persist the rename itself (POSIX); silently skipped where directories cannot be opened."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
