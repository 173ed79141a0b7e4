"""Launching rank processes from tests: spawned (never forked), bounded in time, never left behind.

Forking a test process that already ran torch (OpenMP pool, BLAS threads, locks held by other threads)
can deadlock the child; spawning starts each rank from a clean interpreter, as torchrun does. Every
launch has a deadline, and collectives time out after COLLECTIVE_TIMEOUT_MIN, so a rendezvous that
cannot complete fails the test with a message instead of stalling the suite.
"""
from __future__ import annotations

import datetime
import functools
import os
import signal
import socket
import subprocess
import time
from typing import Callable, List, Optional

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from score_sde import distributed

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
                raise TimeoutError(f"{world} rank processes of {fn.__name__} did not finish within {timeout:.0f} s")
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


def _probe(rank: int, world: int, port: int) -> None:
    rank_env(rank, world, port)
    distributed.pin_gloo_to_loopback()
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
    try:
        total = torch.ones(1)
        dist.all_reduce(total)
        assert float(total) == world
    finally:
        dist.destroy_process_group()


@functools.lru_cache(maxsize=None)
def gloo_problem() -> Optional[str]:
    """Why two local gloo processes cannot all-reduce on this machine (plain torch), or None if they can."""
    try:
        launch(_probe, 2, timeout=90)
    except Exception as err:  # noqa: BLE001 - any failure means the machine cannot host the test
        return f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:200]}"
    return None


@pytest.fixture
def gloo() -> None:
    """Skip (loudly, in the -ra summary) where the machine itself cannot connect two gloo processes."""
    problem = gloo_problem()
    if problem is not None:
        pytest.skip(f"two local gloo processes cannot all-reduce on this machine ({problem})")
