"""Training-step throughput (items/s): configs x precision/compile/layout, and DDP scaling on CPU (gloo).

    python bench/train_speed.py                      # CPU table + 2-process DDP scaling (digits)
    python bench/train_speed.py --device cuda        # also fp32 / bf16 / bf16+compile / bf16+channels-last
    python bench/train_speed.py --skip-ddp --configs configs/vp/digits_ddpmpp_continuous.py

A step is the full training step of score_sde.losses.get_step_fn (noise draw, forward, fp32 loss,
backward, clipping, Adam, EMA) on a synthetic batch of the config's data shape, so no data set is
needed. Each row times `--steps` steps after `--warmup` warm-up steps (compilation happens in the
warm-up) and reports the median step. DDP scaling keeps the GLOBAL batch fixed (strong scaling):
K processes with 1 thread each, efficiency = throughput(K) / (K * throughput(1)); "CPU efficiency"
compares items per CPU-second summed over processes, which stays meaningful on a shared machine.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from score_sde import builders, data_stream, distributed, losses  # noqa: E402
from score_sde.models.compat import load_config  # noqa: E402

DIGITS = ["configs/vp/digits_ddpmpp_continuous.py", "configs/subvp/digits_ddpmpp_continuous.py",
          "configs/ve/digits_ncsnpp_continuous.py", "configs/vp/ddpm/digits.py", "configs/ve/ncsn/digits.py"]
CIFAR = "configs/vp/cifar10_ddpmpp_continuous.py"


def step_timer(config, device: torch.device, batch: int, precision: str, compile: bool, channels_last: bool,
               info: distributed.DistInfo):
    """A zero-argument function that runs one training step and returns its wall time (s)."""
    with config.unlocked():
        config.training.channels_last = channels_last
    torch.manual_seed(0)
    state = builders.create_state(config, device)
    state["model"] = distributed.wrap_for_training(state["model"], info, compile=compile)
    sde = builders.sde_from_config(config)
    step_fn = losses.get_step_fn(
        sde, train=True, optimize_fn=losses.optimization_manager(config.optim), kind=builders.loss_kind(config),
        continuous=bool(config.training.continuous), reduce_mean=bool(config.training.reduce_mean),
        likelihood_weighting=bool(config.training.likelihood_weighting), prediction=builders.prediction(config),
        precision=distributed.resolve_precision(precision, device))
    x = torch.rand(batch, *builders.data_shape(config), device=device) * 2 - 1
    x = distributed.to_memory_format(x, channels_last)

    def run() -> tuple:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        step_fn(state, x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0, time.process_time() - c0

    return run


def measure(run, warmup: int, steps: int, budget: float) -> tuple:
    """Median (wall seconds, CPU seconds of this process) of a step. CPU time (all threads) is what a
    step costs when the machine is shared; wall time is what it takes."""
    for _ in range(warmup):
        run()
    times, start = [], time.perf_counter()
    while len(times) < steps and (len(times) < 2 or time.perf_counter() - start < budget):
        times.append(run())
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def single(args, path: str, batch: int, device: torch.device, precision: str, compile: bool, cl: bool):
    info = distributed.DistInfo(0, 1, 0, device)
    return measure(step_timer(load_config(ROOT / path), device, batch, precision, compile, cl, info),
                   args.warmup, args.steps, args.budget)


# ----------------------------------------------------------------------------- DDP scaling (CPU, gloo)
def _ddp_worker(rank, world, port, path, global_batch, warmup, steps, budget, threads, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(threads)
    info = distributed.setup("cpu")
    try:
        local = data_stream.local_batch_size(global_batch, info)
        run = step_timer(load_config(ROOT / path), info.device, local, "fp32", False, False, info)
        wall, cpu = measure(run, warmup, steps, budget)
        times = distributed.all_gather_cat(torch.tensor([[wall, cpu]], dtype=torch.float64), info)
        if rank == 0:  # the slowest rank's wall time; the CPU time of all ranks together
            out.put((float(times[:, 0].max()), float(times[:, 1].sum())))
    finally:
        distributed.cleanup()


def ddp_throughput(path: str, world: int, global_batch: int, args, threads: int = 1) -> tuple:
    """(items per wall second, items per CPU second summed over processes) of the global batch."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_ddp_worker, nprocs=world, join=True,
             args=(world, port, path, global_batch, args.warmup, args.steps, args.budget, threads, queue))
    wall, cpu = queue.get()
    return global_batch / wall, global_batch / cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="*", default=DIGITS + [CIFAR])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=128, help="batch of the digits configs")
    p.add_argument("--cifar-batch", type=int, default=None, help="CIFAR-10 batch (default: 8 on CPU, 128 on GPU)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--budget", type=float, default=30.0, help="max seconds of timed steps per row")
    p.add_argument("--ddp-config", default=DIGITS[0])
    p.add_argument("--ddp-batch", type=int, default=128)
    p.add_argument("--skip-ddp", action="store_true")
    p.add_argument("--cpu-compile", action="store_true", help="also time torch.compile on CPU")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of the single-process rows")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is visible")
    torch.set_num_threads(args.threads)
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()}-core CPU")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"# {machine}, torch {torch.__version__}, {args.threads} thread(s), load average before the run: {load}\n")

    variants = [("fp32", False, False)] + ([("fp32", True, False)] if args.cpu_compile else [])
    if device.type == "cuda":
        variants += [("bf16", False, False), ("bf16", True, False), ("bf16", False, True), ("bf16", True, True)]
    print("| config | batch | precision | compile | channels_last | s/step | items/s | CPU s/step | items/CPU-s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in args.configs:
        batch = (args.cifar_batch or (8 if device.type == "cpu" else 128)) if "cifar10" in path else args.batch
        for precision, compile, cl in variants:
            try:
                sec, cpu = single(args, path, batch, device, precision, compile, cl)
                print(f"| {path} | {batch} | {precision} | {compile} | {cl} | {sec:.4g} | {batch / sec:.3g} "
                      f"| {cpu:.4g} | {batch / cpu:.3g} |", flush=True)
            except Exception as e:  # a failing variant is a result too (e.g. compile unsupported)
                print(f"| {path} | {batch} | {precision} | {compile} | {cl} | failed: "
                      f"{type(e).__name__}: {str(e).splitlines()[0][:80]} | |", flush=True)

    if args.skip_ddp:
        return
    print(f"\nDDP strong scaling on CPU (gloo), {args.ddp_config}, global batch {args.ddp_batch}\n")
    print("| processes x threads | items/s | speed-up vs 1x1 | efficiency | items/CPU-s | CPU efficiency |")
    print("|---|---|---|---|---|---|")
    base = None
    for world, threads in ((1, 1), (2, 1), (1, 2)):
        rate, per_cpu = ddp_throughput(args.ddp_config, world, args.ddp_batch, args, threads)
        base = base or (rate, per_cpu)
        print(f"| {world} x {threads} | {rate:.3g} | {rate / base[0]:.2f} | {rate / (world * threads * base[0]):.0%} "
              f"| {per_cpu:.3g} | {per_cpu / base[1]:.0%} |", flush=True)


if __name__ == "__main__":
    main()
