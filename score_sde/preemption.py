"""Graceful stop on SIGTERM / SIGINT: the training loop finishes its step, saves, and exits in one line.

    with StopOnSignal() as stop:
        while ...:
            step()
            if stop.requested(info):          # all ranks agree, so none is left in a collective
                save_preemption_checkpoint()
                raise Preempted(stop.signal_name, step, path)

A second signal of the same kind while the first is being handled stops at once (the default
behaviour: KeyboardInterrupt for SIGINT, termination for SIGTERM). The command line turns Preempted
into one line and exit status 128 + signal number (143 for SIGTERM, 130 for SIGINT), the status a
shell and batch schedulers expect from a job ended by that signal.
"""
from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any, Dict, Optional

import torch

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """Training stopped on a signal after saving; `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int, step: int, path: Optional[str]):
        self.signum, self.step, self.path = int(signum), int(step), path
        self.exit_code = 128 + self.signum
        saved = f"saved {path}" if path else "nothing to save"
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; {saved}; "
                         f"run the same command again to resume")


class StopOnSignal:
    """Context manager: while inside, SIGTERM/SIGINT set a flag instead of ending the process.

    Outside the main thread (where Python cannot install handlers) it does nothing."""

    def __init__(self, signals=SIGNALS):
        self.signals = tuple(signals)
        self.signum: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signum is not None:  # second signal: give up waiting
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.signum = signum
        log.warning("%s received: finishing this step, then saving and stopping (send it again to stop now)",
                    signal.Signals(signum).name)

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def requested(self, info: Any = None) -> bool:
        """Whether a stop was asked for; under torchrun (info.distributed) true on every rank as soon
        as it is true on any (one all-reduce of a flag)."""
        flag = self.signum is not None
        if info is None or not getattr(info, "distributed", False):
            return flag
        import torch.distributed as dist

        t = torch.tensor([self.signum or 0, int(flag)], dtype=torch.int64,
                         device=info.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if self.signum is None and int(t[1]):
            self.signum = int(t[0])
        return bool(int(t[1]))
