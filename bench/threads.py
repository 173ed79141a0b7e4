"""Training steps/s of the default digits config under thread settings, idle and with a competing job.

    python bench/threads.py              # 3 settings x (idle, loaded): a few minutes on 2 cores
    python bench/threads.py --steps 10

Each row runs `--steps` full training steps (score_sde.losses step on a synthetic digits batch, after
3 warm-up steps) in a fresh process. "loaded": another process runs a 2-thread torch matmul loop on
the same cores for the whole measurement (what a second job on a shared machine does).
Settings: torch's default (one OpenMP thread per core, libgomp's spinning wait policy), the same
threads with OMP_WAIT_POLICY=PASSIVE, one thread, and shorter spins before sleeping (GOMP_SPINCOUNT).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import sys, time, torch
sys.path.insert(0, {root!r})
import importlib
from score_sde import builders, losses
from score_sde.pipeline.spec import Spec
spec = Spec.from_config(importlib.import_module("configs.vp.digits_ddpmpp_continuous").get_config())
torch.manual_seed(0)
state = builders.create_state(spec, torch.device("cpu"))
sde = builders.sde_from_config(spec)
step = losses.get_step_fn(sde, train=True, optimize_fn=losses.optimization_manager(spec.optim),
                          kind=spec.training.loss_kind, continuous=True, reduce_mean=True,
                          likelihood_weighting=False, prediction=None, precision="fp32")
x = torch.rand(spec.training.batch_size, *spec.shape) * 2 - 1
for _ in range(3):
    step(state, x)
t = time.perf_counter()
for _ in range({steps}):
    step(state, x)
print({steps} / (time.perf_counter() - t))
"""

LOAD = "import torch\na = torch.randn(512, 512)\nwhile True:\n    a = (a @ a).tanh()\n"

SETTINGS = {
    "default (2 threads, spinning)": {"OMP_WAIT_POLICY": None, "OMP_NUM_THREADS": None},
    "2 threads, OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": None},
    "1 thread": {"OMP_WAIT_POLICY": None, "OMP_NUM_THREADS": "1"},
    "2 threads, GOMP_SPINCOUNT=10000": {"OMP_WAIT_POLICY": None, "OMP_NUM_THREADS": None, "GOMP_SPINCOUNT": "10000"},
    "2 threads, GOMP_SPINCOUNT=100000": {"OMP_WAIT_POLICY": None, "OMP_NUM_THREADS": None, "GOMP_SPINCOUNT": "100000"},
}


def env_with(changes):
    env = dict(os.environ)
    for k, v in changes.items():
        env.pop(k, None)
        if v is not None:
            env[k] = v
    return env


def run(changes, steps: int, loaded: bool) -> float:
    load = subprocess.Popen([sys.executable, "-c", LOAD], env=env_with({"OMP_NUM_THREADS": None})) if loaded else None
    try:
        time.sleep(2.0 if loaded else 0.0)
        out = subprocess.run([sys.executable, "-c", WORKER.format(root=str(ROOT), steps=steps)],
                             env=env_with(changes), capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])
    finally:
        if load is not None:
            load.kill()
            load.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--only", default="", help="run only the settings whose name contains this text")
    args = parser.parse_args()
    print(f"| setting | idle steps/s | loaded steps/s | loaded / idle |\n|---|---|---|---|")
    for name, changes in SETTINGS.items():
        if args.only not in name:
            continue
        idle, loaded = run(changes, args.steps, False), run(changes, args.steps, True)
        print(f"| {name} | {idle:.2f} | {loaded:.2f} | {loaded / idle:.2f} |", flush=True)


if __name__ == "__main__":
    main()
