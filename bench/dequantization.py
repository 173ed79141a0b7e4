"""Benchmark: bits/dim of a trained image checkpoint under each dequantizer, to choose the truncated normal's
sigma on TRAINING items (never the test set) before a run reports test bits/dim.

    python bench/dequantization.py runs/digits_vp                       # 100 training items, default grid
    python bench/dequantization.py CKPT --sigmas 0.02,0.03,0.04 --items 300 --split test

Rows: the uniform dequantizer, then the truncated normal at each sigma (model space; tau = half bin / sigma),
each the same items through dequantization.discrete_nll with the two-pass quadrature (32 log-sigma nodes x 8
orthogonal probes: low probe noise, so `--draws K` importance weighting is unbiased). Columns: bits/dim with
its standard error over items, NFE, seconds (ratios only: the machine may be shared).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import score_sde  # noqa: E402
from score_sde import datasets, dequantization  # noqa: E402
from score_sde.pipeline.eval_context import split  # noqa: E402
from score_sde.pipeline.eval_likelihood import dequantizer_options  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a workdir (newest checkpoint) or a checkpoint file")
    ap.add_argument("--sigmas", default="0.015,0.02,0.025,0.03,0.04,0.05")
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--split", default="train", choices=("train", "test"))
    ap.add_argument("--draws", type=int, default=1, help="K dequantizations per item (importance-weighted bound)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    exp = score_sde.load(args.checkpoint)
    spec = exp.spec
    if not spec.data.is_discrete:
        raise SystemExit(f"error: {spec.data.dataset!r} is not discrete (no data.num_levels); nothing to dequantize")
    ds = split(spec, args.split, centres=True)
    n = min(args.items, len(ds))
    y = datasets.get_data_scaler(spec)(torch.stack([ds[i] for i in range(n)])).to(exp.device)
    data = dequantizer_options(spec)          # levels, scale and shift of the model space
    levels, width, d = data["num_levels"], dequantization.bin_width(data["num_levels"], data["data_scale"]), y[0].numel()
    print(f"{args.checkpoint}: {n} {args.split} items, {levels} levels, bin width {width:.4f}, K = {args.draws}")
    print("| dequantizer | sigma | tau | bits/dim | NFE | seconds |\n|---|---|---|---|---|---|")
    for sigma in [None] + [float(s) for s in args.sigmas.split(",")]:
        kind = "uniform" if sigma is None else "truncated_normal"
        start = time.time()
        nats, nfe = dequantization.discrete_nll(
            exp.sde, exp.score_fn, y, **{**data, "dequantizer": kind, "sigma": sigma},
            draws=args.draws, generator=torch.Generator(device=exp.device).manual_seed(args.seed),
            nodes=32, num_probes=8, trace="hutchinson-orthogonal")
        bpd = nats / (d * math.log(2))
        tau = "" if sigma is None else f"{dequantization.truncation(sigma, width):.2f}"
        print(f"| {kind} | {'' if sigma is None else sigma} | {tau} | {bpd.mean():.4f} ± {bpd.std() / math.sqrt(n):.4f} "
              f"| {nfe} | {time.time() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
