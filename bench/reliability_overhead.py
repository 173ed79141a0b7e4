"""What the reliability guards cost per save: the finite check of weights/optimizer/EMA and the
checksum, as ratios to torch.save of the same checkpoint and to a training step (docs/reliability.md).
(The per-step guard, a finite gradient norm, reuses the norm that gradient clipping computes: free.)

    OMP_NUM_THREADS=1 python bench/reliability_overhead.py [--config configs/vp/digits_ddpmpp_continuous.py]
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from score_sde import builders, checkpoint, datasets, integrity, losses, training  # noqa: E402
from score_sde.models.compat import load_config  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=os.path.join(ROOT, "configs/vp/digits_ddpmpp_continuous.py"))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    config = load_config(args.config)
    config.device = "cpu"
    state = builders.create_state(config, torch.device("cpu"))
    sde = builders.sde_from_config(config)
    step_fn = losses.get_step_fn(sde, train=True, optimize_fn=losses.optimization_manager(config.optim),
                                 kind=builders.loss_kind(config), continuous=bool(config.training.continuous),
                                 reduce_mean=bool(config.training.reduce_mean), prediction=builders.prediction(config))
    train_ds, _ = datasets.get_dataset(config)
    batch = datasets.get_data_scaler(config)(torch.stack([train_ds[i] for i in range(args.batch)]))

    t_step = median_seconds(lambda: step_fn(state, batch), args.repeats)
    t_finite = median_seconds(lambda: training.require_finite(state, None), 4 * args.repeats)
    ckpt = builders.state_dict_for_checkpoint(state)
    ckpt.update(rng=checkpoint.capture_rng_state(), config="{}")
    nbytes = sum(t.numel() * t.element_size() for _, t in integrity.float_tensors(ckpt))
    t_sum = median_seconds(lambda: integrity.checksum(ckpt), args.repeats)
    t_save = median_seconds(lambda: torch.save(ckpt, io.BytesIO()), args.repeats)

    params = sum(p.numel() for p in state["model"].parameters())
    print(f"model {config.model.name}: {params / 1e6:.2f} M parameters, checkpoint tensors {nbytes / 2**20:.0f} MiB, "
          f"batch {args.batch}, {torch.get_num_threads()} thread(s)")
    print(f"{'operation':<34}{'ms':>10}{'ratio':>10}")
    print(f"{'training step':<34}{t_step * 1e3:>10.1f}{1.0:>10.3f}")
    print(f"{'torch.save to memory':<34}{t_save * 1e3:>10.1f}{t_save / t_step:>10.3f}")
    print(f"{'finite check (every save)':<34}{t_finite * 1e3:>10.1f}{t_finite / t_step:>10.3f}"
          f"  = {t_finite / t_save:.2f} x torch.save")
    print(f"{'checksum (every save and load)':<34}{t_sum * 1e3:>10.1f}{t_sum / t_step:>10.3f}"
          f"  = {t_sum / t_save:.2f} x torch.save ({nbytes / 2**20 / t_sum:.0f} MiB/s)")


if __name__ == "__main__":
    main()
