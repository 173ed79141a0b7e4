"""Fast samplers at 10-20 network calls on image-like Gaussian mixtures, fed the EXACT score (issue 13).

    python bench/samplers_fast.py                         # 64-D (3 seeds) + mix16, ~10 min on a 2-core CPU
    python bench/samplers_fast.py --problems img3072 --n 256   # 3072-D, a few minutes per sampler set
    python bench/samplers_fast.py --plot bench/samplers_fast.png   # PNG of dlogp vs NFE (needs matplotlib)
    python bench/samplers_fast.py --digits WORKDIR/checkpoints/checkpoint_1500.pth --n 1000   # trained digits model
        (WORKDIR from: python main.py --config configs/vp/digits_ddpmpp_continuous.py --workdir WORKDIR --mode train)

Problems (VP SDE, beta 0.1..20):
  img64      toy.image_like_mixture(64, 8 components, seed): power-law spectra over 3 decades (variances
             0.05 .. 5e-5), each component in its own random rotation
  img3072    the same in 3072 dimensions (2 components, fewer samples: the exact score costs d^2 per sample)
  mix16      toy.random_mixture(16, 8, seed): low-dimensional, anisotropic full covariances
Columns: NFE; dlogp +- se (mean exact log p0 of the samples minus that of as many exact samples; > 0 too
concentrated, < 0 too diffuse); TV between the component occupancies (hard assignment under p0) and the
weights, next to its floor (its expected value for n exact samples; all samplers share their x_T draws, so
their TVs move together); seconds of one run (ratios only: shared machine). Samplers run in float64 so
the table shows solver error, not round-off. "sspt" rows reproduce score_sde_pytorch's best settings:
Euler-Maruyama (pc predictor, no corrector) and reverse-diffusion + Langevin (snr 0.16), uniform times from
T to eps = 1e-3, N = 1000, returning the last mean (its "denoise"), as its run_lib does.
--digits CKPT: instead of the mixtures, a checkpoint of configs/vp/digits_ddpmpp_continuous.py (EMA weights,
float32, as the pipeline samples): per sampler and NFE, the sliced W2 (256 projections, the same for every
row) of n samples in data space (clamped to [0, 1], as the evaluation does) to the held-out digits, next to
its floor: the sliced W2 of n training digits to the same held-out digits.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import re
import sys
import time
from typing import Dict, List

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from score_sde import builders, datasets, metrics, sampling, sde_lib, toy  # noqa: E402

FAST = {  # label -> (sampler, options without steps, NFE(steps))
    "dpmpp_2m": ("dpmpp_2m", {}, None),
    "dpmpp_2m edm": ("dpmpp_2m", {"schedule": "edm"}, None),
    "dpm_solver (3M)": ("dpm_solver", {}, None),
    "deis_unipc": ("deis_unipc", {}, None),
    "unipc": ("unipc", {}, None),
    "unipc p3": ("unipc", {"order": 3}, None),
    "unipc p2 edm": ("unipc", {"order": 2, "schedule": "edm"}, None),
    "deis": ("deis", {}, None),
    "ipndm": ("ipndm", {}, None),
    "euler": ("euler", {}, None),
    "euler_ancestral": ("euler_ancestral", {}, None),
    "dpmpp_2m_sde": ("dpmpp_2m_sde", {}, None),
    "dpmpp_3m_sde": ("dpmpp_3m_sde", {}, None),
    "heun": ("heun", {}, "heun"),
}
SSPT = {
    "sspt euler_maruyama N=1000": ("pc", {"predictor": "euler_maruyama", "corrector": "none", "steps": 1000,
                                           "eps": 1e-3}),
    "sspt pc rev.diff.+langevin N=1000": ("pc", {"steps": 1000, "eps": 1e-3}),
    "ode RK45 1e-5": ("ode", {}),
}


def problem(name: str, seed: int) -> toy.GaussianMixture:
    if name == "img64":
        return toy.image_like_mixture(64, 8, seed)
    if name == "img3072":
        return toy.image_like_mixture(3072, 2, seed)
    return toy.random_mixture(16, 8, seed)


class Reference:
    def __init__(self, gmm: toy.GaussianMixture, n: int, seed: int):
        g = torch.Generator().manual_seed(10_000 + seed)
        self.gmm, w = gmm, gmm.weights
        self.logp = gmm.log_prob(gmm.sample(n, g))
        self.tv_floor = 0.5 * float((math.sqrt(2 / math.pi) * (w * (1 - w) / n).sqrt()).sum())  # E TV, exact

    def occupancy(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bincount(self.gmm.assign(x), minlength=self.gmm.num_components).double() / len(x)

    def score(self, x: torch.Tensor) -> Dict[str, float]:
        x = x.double()
        if not torch.isfinite(x).all():
            return {"dlogp": math.nan, "se": math.nan, "tv": math.nan}
        lp = self.gmm.log_prob(x)
        return {"dlogp": float(lp.mean() - self.logp.mean()),
                "se": math.sqrt(float(lp.var() / len(lp) + self.logp.var() / len(self.logp))),
                "tv": 0.5 * float((self.occupancy(x) - self.gmm.weights).abs().sum())}


def run(sampler: str, options: dict, gmm, sde, ref: Reference, n: int, seed: int) -> dict:
    build = sampling.get_sampler(sampler, sde, (n, gmm.dim), dtype=torch.float64, **options)
    start = time.perf_counter()
    x, nfe = build(gmm.score_fn(sde), generator=torch.Generator().manual_seed(seed))
    return {"nfe": nfe, "seconds": time.perf_counter() - start, **ref.score(x)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=["img64", "mix16"], choices=["img64", "img3072", "mix16"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=2000, help="samples per run (and exact reference samples)")
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--samplers", nargs="+", default=list(FAST), help=f"labels from {list(FAST)}")
    parser.add_argument("--sspt", action="store_true", help="add score_sde_pytorch's best settings (1000-2000 NFE)")
    parser.add_argument("--plot", default=None, help="write a PNG of dlogp vs NFE (needs matplotlib)")
    parser.add_argument("--replot", default=None, help="only redraw --plot from a saved output of this script")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--digits", default=None, metavar="CKPT",
                        help="benchmark a trained digits checkpoint (configs/vp/digits_ddpmpp_continuous.py) instead")
    args = parser.parse_args()
    if args.replot:
        return plot(parse(args.replot), args.plot or "bench/samplers_fast.png")
    torch.set_num_threads(args.threads)
    if args.digits:
        return digits(args.digits, args.samplers, args.nfe, args.n, args.seeds[0])
    sde = sde_lib.VPSDE()
    print(f"# exact-score samplers, VP: n={args.n}, torch {torch.__version__}, {platform.machine()}, "
          f"{args.threads} thread(s)\n")
    rows: List[dict] = []
    for prob in args.problems:
        for seed in args.seeds:
            gmm = problem(prob, seed)
            ref = Reference(gmm, args.n, seed)
            print(f"\n## {prob}, seed {seed} (TV floor {ref.tv_floor:.3f})\n")
            print("| sampler | NFE | dlogp ± se | TV | seconds |\n|---|---:|---:|---:|---:|")
            todo = [(label, s, {**o, "steps": (k + 1) // 2 if kind == "heun" else k})
                    for label in args.samplers for s, o, kind in [FAST[label]] for k in args.nfe]
            if args.sspt:
                todo += [(label, s, o) for label, (s, o) in SSPT.items()
                         if not (label.startswith("sspt pc") and seed != args.seeds[0])]
            for label, sampler, options in todo:
                r = run(sampler, options, gmm, sde, ref, args.n, seed)
                rows.append({"problem": prob, "seed": seed, "label": label, **r})
                print(f"| {label} | {r['nfe']} | {r['dlogp']:+.2f} ± {r['se']:.2f} | {r['tv']:.3f} | "
                      f"{r['seconds']:.1f} |", flush=True)
    if args.plot:
        plot(rows, args.plot)


def digits_model(ckpt: str):
    """(config, sde, score_fn) of a digits checkpoint, EMA weights, on the CPU."""
    from configs.vp.digits_ddpmpp_continuous import get_config
    config = get_config()
    config.device = "cpu"
    state = builders.create_state(config, torch.device("cpu"))
    builders.load_state(state, torch.load(ckpt, map_location="cpu", weights_only=False), ckpt)
    state["ema"].copy_to(state["model"].parameters())
    sde = builders.sde_from_config(config)
    return config, sde, builders.score_fn_from_model(config, sde, state["model"].eval())


def digits(ckpt: str, labels: List[str], nfes: List[int], n: int, seed: int) -> None:
    """Sliced W2 to the held-out digits per sampler and NFE, next to the train-vs-test floor."""
    config, sde, score_fn = digits_model(ckpt)
    train, test = datasets.get_dataset(config)
    n = min(n, len(train))                                   # as many samples as floor digits: the same bias
    torch.manual_seed(seed)                                  # the dequantization noise, as evaluation draws it
    ref = torch.stack([test[i] for i in range(len(test))])
    floor_set = torch.stack([train[i] for i in range(n)])
    sw = lambda a: metrics.sliced_wasserstein(a, ref, generator=torch.Generator().manual_seed(seed))  # noqa
    to_data = lambda x: datasets.get_data_inverse_scaler(config)(x).clamp(0.0, 1.0)  # noqa
    print(f"# digits checkpoint {ckpt}: n={n} samples, {len(ref)} held-out digits, torch {torch.__version__}, "
          f"{platform.machine()}, {torch.get_num_threads()} thread(s)\n")
    print(f"floor (sliced W2 of {len(floor_set)} training digits to the held-out ones): {sw(floor_set):.4f}\n")
    print("| sampler | NFE | sliced W2 | seconds |\n|---|---:|---:|---:|")
    for label in labels:
        name, options, kind = FAST[label]
        for k in nfes:
            build = sampling.get_sampler(name, sde, (n, *train.shape), **options,
                                         steps=(k + 1) // 2 if kind == "heun" else k)
            start = time.perf_counter()
            with torch.no_grad():
                x, nfe = build(score_fn, generator=torch.Generator().manual_seed(seed))
            seconds = time.perf_counter() - start
            print(f"| {label} | {nfe} | {sw(to_data(x)):.4f} | {seconds:.1f} |", flush=True)


def parse(path: str) -> List[dict]:
    """Rows back from this script's printed tables."""
    rows, prob = [], None
    for line in open(path):
        head = re.match(r"## (\w+), seed (\d+)", line)
        if head:
            prob = head.group(1)
        row = re.match(r"\| (.+?) \| (\d+) \| ([+-][\d.]+) ± ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", line)
        if row and prob:
            rows.append({"problem": prob, "label": row.group(1), "nfe": int(row.group(2)), "dlogp": float(row.group(3)),
                         "se": float(row.group(4)), "tv": float(row.group(5)), "seconds": float(row.group(6))})
    return rows


def plot(rows: List[dict], path: str) -> None:
    import matplotlib  # optional, bench only
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = sorted({r["problem"] for r in rows})
    fig, axes = plt.subplots(1, len(probs), figsize=(6.5 * len(probs), 5), squeeze=False)
    for ax, prob in zip(axes[0], probs):
        for j, label in enumerate(sorted({r["label"] for r in rows if r["problem"] == prob})):
            pts: Dict[int, List[float]] = {}
            for r in rows:
                if r["problem"] == prob and r["label"] == label and math.isfinite(r["dlogp"]):
                    pts.setdefault(r["nfe"], []).append(abs(r["dlogp"]))
            if pts:
                nfes = sorted(pts)
                ax.plot(nfes, [sum(pts[k]) / len(pts[k]) for k in nfes], "osv^Dp*"[j % 7] + "-", label=label)
        se = sorted(r["se"] for r in rows if r["problem"] == prob and math.isfinite(r["se"]))
        if se:
            ax.axhline(3 * se[len(se) // 2], color="k", ls="--", lw=0.8, label="3 se (median)")
        ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="|dlogp| (nats, mean over seeds)", title=prob)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nplot written to {path}")


if __name__ == "__main__":
    main()
