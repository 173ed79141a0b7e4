"""Launching rank processes from tests: spawned (never forked), bounded in time, never left behind.

Forking a test process that already ran torch (OpenMP pool, BLAS threads, locks held by other threads)
can deadlock the child; spawning starts each rank from a clean interpreter, as torchrun does. Every
launch has a deadline, and collectives time out after COLLECTIVE_TIMEOUT_MIN, so a rendezvous that
cannot complete fails the test with a message instead of stalling the suite.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import Callable, List

import pytest
import torch
import torch.multiprocessing as mp

LAUNCH_TIMEOUT_S = 240
COLLECTIVE_TIMEOUT_MIN = "2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int) -> None:
    """What torchrun sets for one rank on one node, plus one thread and a short collective timeout."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1",
                      SCORE_SDE_DIST_TIMEOUT_MIN=COLLECTIVE_TIMEOUT_MIN)
    torch.set_num_threads(1)


def launch(fn: Callable, world: int, *args, timeout: float = LAUNCH_TIMEOUT_S) -> None:
    """Run fn(rank, world, port, *args) in `world` spawned processes; fail the test after `timeout` s."""
    ctx = mp.start_processes(fn, args=(world, free_port(), *args), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                pytest.fail(f"{world} rank processes of {fn.__name__} did not finish within {timeout:.0f} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()


def run_command(cmd: List[str], timeout: float = LAUNCH_TIMEOUT_S, **popen) -> subprocess.CompletedProcess:
    """Run cmd in its own session; on timeout kill the whole session (torchrun agent and workers) and fail."""
    env = dict(popen.pop("env", os.environ), SCORE_SDE_DIST_TIMEOUT_MIN=COLLECTIVE_TIMEOUT_MIN)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **popen)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:4])} ... did not finish within {timeout:.0f} s:\n{out[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, None)
