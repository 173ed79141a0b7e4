"""One-line reports for the faults an operator meets: a full or read-only disk, missing permissions, a
held workdir, a preempted run, an unreadable image, a config file that raises (docs/reliability.md).

`describe(exc)` returns (line, exit status) for such an exception, or None for a genuine bug (which
keeps its traceback).
"""
from __future__ import annotations

import errno
import os
import traceback
from typing import Optional, Tuple

from .preemption import Preempted
from .workdir_lock import LockedError

_OS_FIXES = {
    errno.ENOSPC: "the disk is full; free space or point --workdir at a larger disk, then rerun to resume",
    errno.EDQUOT: "the disk quota is exhausted; free space or raise the quota, then rerun to resume",
    errno.EROFS: "the file system is read-only; use a writable --workdir (or copy the run there)",
    errno.EACCES: "permission denied; fix the permissions or use a folder you own",
    errno.EPERM: "operation not permitted; fix the permissions or use a folder you own",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n)",
    errno.EIO: "an I/O error from the device; check the disk",
}


def describe_os_error(e: OSError) -> str:
    """'<strerror> at <path>: <fix>' for an OSError (ENOSPC, EROFS, EACCES, ...)."""
    where = e.filename if e.filename is not None else "an unnamed file"
    if getattr(e, "filename2", None):
        where = f"{where} -> {e.filename2}"
    reason = e.strerror or type(e).__name__
    fix = _OS_FIXES.get(e.errno, "check the path, the disk and the permissions")
    return f"{reason} at {where}: {fix}"


def _pil_error(e: BaseException) -> Optional[str]:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        return None
    if isinstance(e, Image.DecompressionBombError):
        return f"an image is larger than Pillow's decompression-bomb limit ({str(e).splitlines()[0]}); " \
               f"remove or shrink it"
    return None


def describe(e: BaseException) -> Optional[Tuple[str, int]]:
    """(one line, exit status) for an operator-facing fault, None otherwise."""
    if isinstance(e, Preempted):
        return str(e), e.exit_code
    if isinstance(e, LockedError):
        return f"error: {e}", 1
    if isinstance(e, KeyboardInterrupt):
        return "interrupted before a checkpoint could be saved; the checkpoints on disk are intact - rerun to resume", 130
    pil = _pil_error(e)
    if pil:
        return f"error: {pil}", 1
    if isinstance(e, OSError):
        return f"error: {describe_os_error(e)}", 1
    return None


def describe_config_error(e: BaseException, config_path: Optional[str]) -> str:
    """'error: --config <file> raised <Type>: <message> (line N); fix the config file' for an exception
    raised while the config file ran."""
    line = ""
    if config_path:
        target = os.path.abspath(config_path)
        for frame in traceback.extract_tb(e.__traceback__):
            if os.path.abspath(frame.filename) == target:
                line = f" (line {frame.lineno})"
    text = str(e).splitlines()[0] if str(e) else "no message"
    return f"error: --config {config_path or ''} raised {type(e).__name__}: {text}{line}; fix the config file"
