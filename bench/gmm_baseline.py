"""Digits bits/dim: our model versus scikit-learn GaussianMixture on the same dequantized test split.

Both numbers are bits/dim of the [0,1]-dequantized digits x = (k + u) / 17 (k in 0..16, u ~ U[0,1)):
    bpd = (E[-ln p_X(x)] + d ln 17) / (d ln 2),  d = 64,
an upper bound on the discrete code length (Theis et al. 2016). The GMMs are fitted in the model's
space y = a x + b (a = 2, b = -1 when config.data.centered, else a = 1, b = 0), on several
dequantization draws of the train split, so ln p_X(x) = ln p_Y(y) + d ln a (change of variables, dy/dx = a).

    python bench/gmm_baseline.py --report WORKDIR/eval/ckpt_N/bpd.json [--centered]
    python bench/gmm_baseline.py --config configs/digits.py --workdir WORKDIR   # runs evaluate() first
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from score_sde import datasets  # noqa: E402
from score_sde.models.compat import load_config  # noqa: E402

D, LEVELS = 64, 17


def digits_config(centered: bool):
    import ml_collections
    c = ml_collections.ConfigDict()
    c.data = dict(dataset="digits", image_size=8, num_channels=1, num_levels=LEVELS, centered=centered,
                  uniform_dequantization=True, random_flip=False)
    return c


def dequantized(split, draws: int, seed: int) -> np.ndarray:
    """[draws * len(split), 64] float64 dequantized items (a fresh uniform draw each time)."""
    torch.manual_seed(seed)
    return np.concatenate([torch.stack([split[i] for i in range(len(split))]).reshape(len(split), -1)
                           .double().numpy() for _ in range(draws)])


def bits_per_dim(log_px: np.ndarray) -> np.ndarray:
    """Per-example bits/dim of [0,1]-dequantized data from ln p_X (spec: likelihood.bits_per_dim)."""
    return (-log_px + D * math.log(LEVELS)) / (D * math.log(2.0))


def gmm_table(centered: bool, components: List[int], train_draws: int, test_draws: int,
              first_n: Optional[int], seed: int) -> List[Dict]:
    from sklearn.mixture import GaussianMixture
    cfg = digits_config(centered)
    train_ds, test_ds = datasets.get_dataset(cfg)
    scale, shift = (2.0, -1.0) if centered else (1.0, 0.0)
    x_train = dequantized(train_ds, train_draws, seed)
    x_test = dequantized(test_ds, test_draws, seed + 1)
    rows = []
    for k in components:
        start = time.perf_counter()
        gmm = GaussianMixture(k, covariance_type="full", random_state=seed, max_iter=500)
        gmm.fit(scale * x_train + shift)
        log_px = gmm.score_samples(scale * x_test + shift) + D * math.log(scale)  # Jacobian of y = a x + b
        bpd = bits_per_dim(log_px).reshape(test_draws, -1).mean(0)                  # per test image
        row = {"components": k, "test_bpd": float(bpd.mean()),
               "stderr": float(bpd.std(ddof=1) / math.sqrt(len(bpd))), "seconds": time.perf_counter() - start,
               "train_bpd": float(bits_per_dim(gmm.score_samples(scale * x_train + shift)
                                               + D * math.log(scale)).mean())}
        if first_n:
            row["test_bpd_first_n"] = float(bpd[:first_n].mean())
        rows.append(row)
    return rows


def model_report(args) -> Optional[Dict]:
    """Our bits/dim: from a bpd.json report, or by evaluating the newest checkpoint of --workdir."""
    path = args.report
    if path is None and args.workdir:
        from score_sde import checkpoint, evaluation
        cfg = load_config(args.config)
        with cfg.unlocked():
            cfg.eval.enable_bpd, cfg.eval.enable_loss, cfg.eval.enable_sampling = True, False, False
            cfg.eval.begin_ckpt = checkpoint.list_checkpoints(args.workdir)[-1][0]
        evaluation.evaluate(cfg, args.workdir)
        path = os.path.join(args.workdir, "eval", f"ckpt_{cfg.eval.begin_ckpt}", "bpd.json")
    if path is None:
        return None
    with open(path) as f:
        rep = json.load(f)
    if "bits_per_dim" not in rep:
        raise ValueError(f"{path} has no 'bits_per_dim'; pass the bpd.json written by eval.enable_bpd")
    return dict(rep, path=path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--report", help="bpd.json of our evaluation")
    p.add_argument("--workdir", help="run the bpd evaluation of this workdir's newest checkpoint (needs --config)")
    p.add_argument("--config", help="config file (get_config()) for --workdir")
    p.add_argument("--centered", action="store_true", help="fit in [-1,1] (config.data.centered) instead of [0,1]")
    p.add_argument("--components", type=int, nargs="+", default=[1, 2, 5, 10, 20])
    p.add_argument("--train_draws", type=int, default=10, help="dequantization draws of the train split")
    p.add_argument("--test_draws", type=int, default=1, help="dequantization draws per test image")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    ours = model_report(args)
    first_n = ours["num_examples"] if ours and ours.get("num_examples", 0) < 300 else None
    rows = gmm_table(args.centered, args.components, args.train_draws, args.test_draws, first_n, args.seed)
    print(f"digits test split (300 images, d={D}, L={LEVELS}); GMM full covariance fitted on "
          f"{args.train_draws} dequantization draws of the 1497 train images; space "
          f"{'[-1,1]' if args.centered else '[0,1]'}")
    print("| model | train bpd | test bpd (+- s.e.) |" + (f" first {first_n} |" if first_n else "") + " fit s |")
    print("|---|---|---|" + ("---|" if first_n else "") + "---|")
    for r in rows:
        extra = f" {r['test_bpd_first_n']:.3f} |" if first_n else ""
        print(f"| GMM k={r['components']} | {r['train_bpd']:.3f} | {r['test_bpd']:.3f} +- {r['stderr']:.3f} |"
              f"{extra} {r['seconds']:.1f} |")
    best = min(rows, key=lambda r: r["test_bpd"])
    print(f"best GMM (chosen on test, which favours the baseline): k={best['components']} "
          f"{best['test_bpd']:.3f} bits/dim")
    if ours:
        print(f"ours: {ours['bits_per_dim']:.3f} +- {ours.get('bits_per_dim_stderr', float('nan')):.3f} bits/dim "
              f"on {ours.get('num_examples')} test images ({ours['path']}, settings {ours.get('settings')})")
        ref = best.get("test_bpd_first_n", best["test_bpd"])
        print(f"ours - best GMM = {ours['bits_per_dim'] - ref:+.3f} bits/dim "
              f"({'BEATS' if ours['bits_per_dim'] < ref else 'does NOT beat'} the baseline)")


if __name__ == "__main__":
    main()
