"""The command line's controllable generation (issue 11): labelled / guided sampling, the noise-conditional
classifier, inpainting and colorization of held-out data. The library is score_sde.conditioning; this module
only wires the spec (sampling.label / guidance / classifier, the inpaint and classifier sections) to it.

    --mode sample            a conditional model (data.num_classes) or a label / guidance: grid per class
    --mode train_classifier  p_t(c | x_t) for the workdir's SDE      -> <workdir>/classifier/
    --mode inpaint|colorize  held-out data, mask inpaint.mask        -> <workdir>/<eval_folder>/<mode>_<step>/
"""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch

from .. import builders, checkpoint, classifier as classifier_lib, conditioning, datasets, images, report
from ..atomic import atomic_write
from .experiment import Experiment, load
from .spec import Spec

log = logging.getLogger(__name__)
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
CLASSIFIER_FILE = "classifier.pth"


def run(spec: Spec, workdir: str, mode: str, eval_folder: str = "eval", progress: bool = True) -> str:
    """Dispatch one of the conditional modes; returns the output folder."""
    if mode == "train_classifier":
        return train_classifier(spec, workdir)
    if mode == "sample":
        return sample(spec, workdir, eval_folder)
    if mode in ("inpaint", "colorize"):
        return restore(spec, workdir, mode, eval_folder)
    raise ValueError(f"unknown conditional mode {mode!r}; choose sample, train_classifier, inpaint or colorize")


# ----------------------------------------------------------------------------- guidance
def check_labels(spec: Spec) -> None:
    """One-line errors for labels and guidance the model (or the classifier) cannot honour."""
    s, c = spec.sampling, spec.data.num_classes
    if s.classifier is None and not c and (s.label is not None or s.guidance):
        what = "sampling.label" if s.label is not None else "sampling.guidance"
        raise ValueError(f"{what} needs a class-conditional model (data.num_classes, trained with "
                         f"training.label_dropout) or a classifier (sampling.classifier=<a train_classifier workdir>)")
    if s.guidance and not s.classifier and spec.training.label_dropout == 0:
        raise ValueError("classifier-free guidance (sampling.guidance > 0) needs a model trained with "
                         "training.label_dropout > 0 (its null class); set sampling.guidance=0")


def _classes(spec: Spec, clf_classes: Optional[int]) -> int:
    c = clf_classes or spec.data.num_classes
    if spec.sampling.label is not None and spec.sampling.label >= c:
        raise ValueError(f"sampling.label={spec.sampling.label} but the model has {c} classes (0..{c - 1}); "
                         f"choose a label < {c}")
    return c


def guided_score(exp: Experiment, spec: Spec, labels: torch.Tensor,
                 clf: Optional[Tuple[torch.nn.Module, int]] = None) -> ScoreFn:
    """score_fn(x, t) for `labels`: classifier guidance (scale sampling.guidance, 1 when 0) with a classifier,
    else the conditional network with classifier-free weight w = sampling.guidance (0: plain conditional)."""
    s = spec.sampling
    cond = None
    if spec.data.num_classes:
        cond = conditioning.conditional_score_fn(exp.sde, exp.model, continuous=spec.training.continuous,
                                                 prediction=spec.model.prediction)
    if clf is not None:
        base = exp.score_fn if cond is None else conditioning.with_labels(cond, None)
        return conditioning.classifier_guidance(base, classifier_lib.log_prob_fn(exp.sde, clf[0]), labels,
                                                scale=s.guidance or 1.0)
    if s.guidance:
        return conditioning.classifier_free(cond, labels, s.guidance)
    return conditioning.with_labels(cond, labels)


def sample(spec: Spec, workdir: str, eval_folder: str = "eval") -> str:
    """eval.num_samples samples of class sampling.label, or (label None) a grid with one row per class:
    <workdir>/<eval_folder>/sample_<step>/<method>_cond_<tag>/ samples.npz (samples, labels), samples.png."""
    check_labels(spec)
    exp = load(workdir, config=spec)
    clf = load_classifier(spec.sampling.classifier, exp.device) if spec.sampling.classifier else None
    c = _classes(spec, clf[1] if clf else None)
    n = spec.eval.num_samples
    if spec.sampling.label is None:
        per_class = max(1, n // c)
        labels = torch.arange(c).repeat_interleave(per_class)
    else:
        per_class, labels = None, torch.full((n,), spec.sampling.label, dtype=torch.long)
    settings = {"sampler": spec.sampling.method, "options": dict(spec.sampling.options), "label": spec.sampling.label,
                "guidance": spec.sampling.guidance, "classifier": spec.sampling.classifier}
    out = os.path.join(workdir, eval_folder, f"sample_{exp.step}",
                       f"{spec.sampling.method}_cond_{report.options_tag(settings)}")
    g = torch.Generator(device=exp.device).manual_seed(spec.seed)
    xs, nfes, start = [], [], time.perf_counter()
    for first in range(0, len(labels), spec.eval.batch_size):
        y = labels[first:first + spec.eval.batch_size].to(exp.device)
        sampler = builders.build_sampler(spec, exp.sde, (len(y), *spec.shape), device=exp.device)
        with torch.set_grad_enabled(clf is not None):
            x, nfe = sampler(guided_score(exp, spec, y, clf), generator=g)
        xs.append(x.detach().float().cpu())
        nfes.append(float(nfe))
    x = datasets.get_data_inverse_scaler(spec)(torch.cat(xs))
    x = x.clamp(0, 1) if len(spec.shape) == 3 else x
    report.save_npz(os.path.join(out, "samples.npz"), samples=x.numpy(), labels=labels.numpy())
    if len(spec.shape) == 3:
        images.save_image_grid(x, os.path.join(out, "samples.png"), nrow=per_class or None)
    report.write_json(os.path.join(out, "report.json"), {
        "settings": settings, "checkpoint": exp.path, "checkpoint_step": exp.step, "num_samples": len(labels),
        "nfe": float(np.mean(nfes)), "seconds": time.perf_counter() - start})
    log.info("%s: %d conditional samples (label %s, guidance %s)", out, len(labels), spec.sampling.label,
             spec.sampling.guidance)
    return out


# ----------------------------------------------------------------------------- the classifier
def build_classifier(spec: Spec, num_classes: int) -> torch.nn.Module:
    """The noise-conditional classifier of spec.classifier (arch auto: mlp for points, wideresnet for images)."""
    from ..models.classifier import MLPClassifier, WideResNetClassifier
    k = spec.classifier
    arch = k.arch if k.arch != "auto" else ("mlp" if len(spec.shape) == 1 else "wideresnet")
    if arch == "mlp":
        return MLPClassifier(int(np.prod(spec.shape)), num_classes, hidden_dims=(k.hidden, k.hidden))
    if len(spec.shape) != 3:
        raise ValueError("classifier.arch='wideresnet' needs image data; use classifier.arch='mlp'")
    return WideResNetClassifier(spec.shape[0], num_classes, depth=k.depth, widen_factor=k.widen_factor)


class _Flat(torch.nn.Module):
    """An MLP classifier on flattened images."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1), log_sigma)


def _labelled(spec: Spec, split: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """All (model-space images, labels) of the train (0) or eval (1) split, unflipped bin centres."""
    if not spec.data.num_classes:
        raise ValueError("--mode train_classifier needs class labels: set data.num_classes (digits: 10)")
    ds = datasets.get_dataset(spec.replace(data={"random_flip": False, "uniform_dequantization": False}))[split]
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    return datasets.get_data_scaler(spec)(x), ds.labels.clone()


def train_classifier(spec: Spec, workdir: str) -> str:
    """Train p_t(c | x_t) on the training split (classifier_loss, t ~ U(eps, T)); held-out accuracy at t = eps
    and at the middle time; writes <workdir>/classifier/classifier.pth and report.json."""
    k, c = spec.classifier, spec.data.num_classes
    x, y = _labelled(spec, 0)
    sde = builders.sde_from_config(spec)
    torch.manual_seed(spec.seed)
    net = build_classifier(spec, c or 0)
    model = _Flat(net) if isinstance(net, _mlp_type()) and len(spec.shape) == 3 else net
    opt = torch.optim.Adam(model.parameters(), lr=k.lr)
    g = torch.Generator().manual_seed(spec.seed)
    start, losses = time.perf_counter(), []
    for step in range(1, k.n_iters + 1):
        idx = torch.randint(len(x), (min(k.batch_size, len(x)),), generator=g)
        losses.append(classifier_lib.classifier_train_step(sde, model, opt, x[idx], y[idx], g, eps=k.eps, grad_clip=1.0))
        if step % k.log_freq == 0:
            log.info("classifier step %d: loss %.4f", step, float(np.mean(losses[-k.log_freq:])))
    xe, ye = _labelled(spec, 1)
    acc = {f"accuracy_t{t:g}": accuracy(sde, model, xe, ye, t) for t in (k.eps, 0.5 * sde.T)}
    out = os.path.join(workdir, "classifier")
    os.makedirs(out, exist_ok=True)
    with atomic_write(os.path.join(out, CLASSIFIER_FILE), "wb") as f:
        torch.save({"state_dict": model.state_dict(), "num_classes": c, "spec": spec.to_json()}, f)
    report.write_json(os.path.join(out, "report.json"), {"classifier": spec.classifier.to_dict(), **acc,
                      "final_loss": float(np.mean(losses[-k.log_freq:])), "seconds": time.perf_counter() - start})
    log.info("classifier -> %s: %s", out, acc)
    return out


def _mlp_type() -> type:
    from ..models.classifier import MLPClassifier
    return MLPClassifier


def accuracy(sde, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, t: float, seed: int = 0) -> float:
    """Fraction of x perturbed to time t that the classifier assigns to its label."""
    g = torch.Generator().manual_seed(seed)
    tt = torch.full((len(x),), float(t))
    mean, std = sde.marginal_prob(x, tt)
    xt = mean + std.view(-1, *[1] * (x.dim() - 1)) * torch.randn(x.shape, generator=g)
    model.eval()
    with torch.no_grad():
        pred = model(xt, torch.log(sde.sigma(tt))).argmax(-1)
    return float((pred == y).double().mean())


def load_classifier(workdir: str, device: torch.device) -> Tuple[torch.nn.Module, int]:
    """(classifier, num_classes) written by --mode train_classifier in `workdir` (sampling.classifier)."""
    path = os.path.join(workdir, "classifier", CLASSIFIER_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"sampling.classifier={workdir!r} holds no classifier/{CLASSIFIER_FILE}; run "
                                f"--mode train_classifier --workdir {workdir} first")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    spec = Spec.from_config(saved["spec"])
    net = build_classifier(spec, saved["num_classes"])
    model = _Flat(net) if isinstance(net, _mlp_type()) and len(spec.shape) == 3 else net
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval(), int(saved["num_classes"])


# ----------------------------------------------------------------------------- inverse problems
def restore(spec: Spec, workdir: str, mode: str, eval_folder: str = "eval") -> str:
    """Inpaint (mask inpaint.mask) or colorize inpaint.num_images held-out images with inpaint.method:
    <out>/grid.png (rows: observed | restored | truth) and <out>/restored.npz."""
    p = spec.inpaint
    if mode == "colorize" and spec.shape[0] != 3:
        raise ValueError(f"--mode colorize needs RGB data (data.num_channels=3), got {spec.shape[0]} channel(s); "
                         f"use --mode inpaint")
    if len(spec.shape) != 3:
        raise ValueError(f"--mode {mode} works on images; data.dataset={spec.data.dataset!r} holds points")
    exp = load(workdir, config=spec)
    ds = datasets.get_dataset(spec.replace(data={"num_classes": None, "random_flip": False,
                                                 "uniform_dequantization": False}))[1]
    n = min(p.num_images, len(ds))
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(spec.seed))[:n]
    truth = torch.stack([ds[int(i)] for i in idx])
    x0 = datasets.get_data_scaler(spec)(truth).to(exp.device)
    g = torch.Generator(device=exp.device).manual_seed(spec.seed)
    options: Dict[str, Any] = {"steps": p.steps} if p.steps else {}
    if p.method == "smc":
        options["particles"] = p.particles
    start = time.perf_counter()
    if mode == "inpaint":
        mask = conditioning.make_mask(p.mask, tuple(x0.shape), p.mask_fraction,
                                      torch.Generator().manual_seed(spec.seed)).to(exp.device)
        with torch.no_grad():
            x, nfe = conditioning.inpaint(exp.sde, exp.score_fn, x0 * mask, mask, g, method=p.method, **options)
        observed = truth * mask.cpu()
        tag, hidden = f"{p.method}_{p.mask}", (1 - mask).cpu()
    else:
        with torch.no_grad():
            x, nfe = conditioning.colorize(exp.sde, exp.score_fn, x0.mean(1, keepdim=True), g, method=p.method,
                                           **options)
        observed = truth.mean(1, keepdim=True).expand_as(truth)
        tag, hidden = p.method, torch.ones_like(truth)
    restored = datasets.get_data_inverse_scaler(spec)(x.detach().float().cpu()).clamp(0, 1)
    out = os.path.join(workdir, eval_folder, f"{mode}_{exp.step}", tag)
    images.save_image_grid(torch.cat([observed, restored, truth]), os.path.join(out, "grid.png"), nrow=n)
    report.save_npz(os.path.join(out, "restored.npz"), observed=observed.numpy(), restored=restored.numpy(),
                    truth=truth.numpy(), mask=(1 - hidden).numpy())
    mse = float(((restored - truth) ** 2 * hidden).sum() / hidden.sum().clamp_min(1))
    report.write_json(os.path.join(out, "report.json"), {
        "mode": mode, "inpaint": p.to_dict(), "checkpoint": exp.path, "checkpoint_step": exp.step,
        "num_images": n, "nfe": float(nfe), "seconds": time.perf_counter() - start, "mse_unobserved": mse,
        "psnr_unobserved": 10 * math.log10(1 / max(mse, 1e-12))})
    log.info("%s: %d images, NFE %s, MSE on restored pixels %.4f", out, n, nfe, mse)
    return out
