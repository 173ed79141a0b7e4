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


def run_commands(cmds: List[List[str]], timeout: float = LAUNCH_TIMEOUT_S,
                 **popen) -> List[subprocess.CompletedProcess]:
    """Run the commands side by side, each in its own session (torchrun agent and workers); if any is
    still running after `timeout` s, kill every session and fail with the tail of each output."""
    env = dict(popen.pop("env", os.environ), SCORE_SDE_DIST_TIMEOUT_MIN=COLLECTIVE_TIMEOUT_MIN)
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True, **popen) for cmd in cmds]
    deadline, outs = time.monotonic() + timeout, []
    for proc in procs:
        try:
            outs.append(proc.communicate(timeout=max(0.1, deadline - time.monotonic()))[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
            tails = "\n---\n".join(p.communicate()[0][-1500:] for p in procs[len(outs):])
            raise TimeoutError(f"{len(cmds)} command(s) did not finish within {timeout:.0f} s:\n{tails}")
    return [subprocess.CompletedProcess(cmd, p.returncode, out, None) for cmd, p, out in zip(cmds, procs, outs)]


def run_command(cmd: List[str], timeout: float = LAUNCH_TIMEOUT_S, **popen) -> subprocess.CompletedProcess:
    return run_commands([cmd], timeout, **popen)[0]


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
