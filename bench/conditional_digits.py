"""Issue 11 demo figures for configs/vp/digits_conditional.py (bench/RESULTS.md, "Conditional digits").

    python main.py --config configs/vp/digits_conditional.py --workdir runs/digits_cond --mode train
    python bench/conditional_digits.py --workdir runs/digits_cond [--per_class 20] [--bpd_images 100]

1. a classifier trained on CLEAN digits (scikit-learn SVC on the training split's 17-level pixels; its held-out
   accuracy is printed) labels conditional samples: the fraction classified as their requested class, for
   classifier-free weights w (sampling.guidance);
2. a per-class sample grid (row c = class c) -> bench/conditional_digits_samples.png;
3. an inpainting grid (held-out digits, right half restored by SMC) -> bench/conditional_digits_inpaint.png;
4. bits/dim of held-out digits under the conditional model (true label) and its null class (unconditional),
   probability-flow ODE at eps = 1e-5, Hutchinson trace, uniform dequantization.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from score_sde import conditioning, datasets, images, likelihood, load  # noqa: E402
from score_sde.evaluation import _bits_per_dim  # noqa: E402
from score_sde.pipeline import conditional  # noqa: E402
from score_sde.training import build_sampler  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def clean_classifier(spec):
    """SVC on the clean training digits (levels 0..16, flattened); returns (predict(x in [0,1]), accuracy)."""
    from sklearn.svm import SVC
    tr, ev = datasets.get_dataset(spec.replace(data={"random_flip": False, "uniform_dequantization": False}))
    def arrays(ds):
        return (np.stack([ds[i][0].numpy().ravel() for i in range(len(ds))]) * 17 - 0.5), ds.labels.numpy()
    (xt, yt), (xe, ye) = arrays(tr), arrays(ev)
    svc = SVC(gamma="scale").fit(xt, yt)
    return (lambda x: svc.predict(x.reshape(len(x), -1).numpy() * 17 - 0.5)), float((svc.predict(xe) == ye).mean())


def conditional_samples(exp, labels, w, seed=0):
    spec = exp.spec.replace(sampling={"guidance": float(w)})
    sampler = build_sampler(spec, exp.sde, (len(labels), *spec.shape), device=exp.device)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x, nfe = sampler(conditional.guided_score(exp, spec, labels), generator=g)
    return datasets.get_data_inverse_scaler(spec)(x).clamp(0, 1), nfe


def bits_per_dim(exp, n, seed=0):
    spec = exp.spec.replace(data={"uniform_dequantization": True, "random_flip": False})
    ev = datasets.get_dataset(spec)[1]
    torch.manual_seed(seed)
    x = torch.stack([ev[i][0] for i in range(n)])
    y = ev.labels[:n]
    x = datasets.get_data_scaler(spec)(x)
    nll_fn = likelihood.get_likelihood_fn(exp.sde, trace="hutchinson-rademacher")
    cond = conditioning.conditional_score_fn(exp.sde, exp.model, continuous=spec.training.continuous,
                                             prediction=spec.model.prediction)
    out = {}
    for name, labels in (("conditional", y), ("null_class", None)):
        nll, _, nfe = nll_fn(conditioning.with_labels(cond, labels), x, generator=torch.Generator().manual_seed(seed))
        bpd = _bits_per_dim(nll.detach().double(), spec, spec.shape)
        out[name] = {"bpd": float(bpd.mean()), "se": float(bpd.std() / len(bpd) ** 0.5), "nfe": int(nfe)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--per_class", type=int, default=20)
    ap.add_argument("--guidance", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--bpd_images", type=int, default=100)  # 0: skip
    ap.add_argument("--skip_inpaint", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "conditional_digits.json"))
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    exp = load(args.workdir, device="cpu")
    result = {"checkpoint": exp.path, "step": exp.step, "sampler": exp.spec.sampling.method,
              "sampler_options": dict(exp.spec.sampling.options)}
    predict, clean_acc = clean_classifier(exp.spec)
    result["clean_classifier_heldout_accuracy"] = clean_acc
    print("clean SVC held-out accuracy", clean_acc, flush=True)
    labels = torch.arange(10).repeat_interleave(args.per_class)
    for w in args.guidance:
        t0 = time.perf_counter()
        x, nfe = conditional_samples(exp, labels, w)
        acc = float((torch.from_numpy(predict(x)) == labels).double().mean())
        per = [float((torch.from_numpy(predict(x[labels == c])) == c).double().mean()) for c in range(10)]
        result[f"accuracy_w{w:g}"] = {"accuracy": acc, "per_class": per, "nfe": float(nfe),
                                      "seconds": time.perf_counter() - t0}
        print(f"w={w:g}: {acc:.3f} of {len(labels)} samples classified as requested", per, flush=True)
        if w == args.guidance[0]:
            images.save_image_grid(x, os.path.join(HERE, "conditional_digits_samples.png"), nrow=args.per_class)
    if args.skip_inpaint:
        return print(json.dumps(result))
    t0 = time.perf_counter()
    folder = conditional.restore(exp.spec.replace(inpaint={"num_images": 10}), args.workdir, "inpaint", "bench")
    shutil.copy(os.path.join(folder, "grid.png"), os.path.join(HERE, "conditional_digits_inpaint.png"))
    result["inpaint"] = {**json.load(open(os.path.join(folder, "report.json"))), "seconds": time.perf_counter() - t0}
    print("inpaint", result["inpaint"], flush=True)
    if not args.bpd_images:
        return print(json.dumps(result))
    t0 = time.perf_counter()
    result["bits_per_dim"] = {**bits_per_dim(exp, args.bpd_images), "images": args.bpd_images,
                              "seconds": time.perf_counter() - t0}
    print("bits/dim", result["bits_per_dim"], flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
