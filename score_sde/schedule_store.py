"""The optimized sampling schedule stored next to the checkpoint (issue 13, item 3).

    python main.py --config ... --workdir W --mode schedule      # once per checkpoint
    python main.py --config ... --workdir W --mode eval --config.sampling.schedule=optimized

`--mode schedule` runs sampling.optimize_schedule (Align-Your-Steps-style coordinate descent, see
score_sde/sampling/optimize.py) for the spec's sampler on the newest checkpoint's EMA weights (or
eval.import_ckpt) and writes `<W>/checkpoints/schedule_<method>.json` with save_schedule; other step
counts already in the file are kept. `sampling.schedule="optimized"` is replaced by that path before
sampling (`resolve`); a stored schedule of another length is interpolated (schedules.stored_schedule).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List

import torch

from . import checkpoint, distributed, workdir_lock
from .pipeline import eval_context
from .pipeline import spec as spec_lib
from .pipeline.spec import Spec, as_spec
from .sampling import optimize, schedules

log = logging.getLogger(__name__)

OPTIMIZED = "optimized"


def schedule_path(workdir: str, method: str) -> str:
    """Where `--mode schedule` stores the optimized schedule of `method`."""
    return os.path.join(workdir, "checkpoints", f"schedule_{method}.json")


def resolve(config: Any, workdir: str) -> Spec:
    """The spec with sampling.schedule="optimized" replaced by the stored file's path (else unchanged)."""
    spec = as_spec(config)
    if spec.sampling.options.get("schedule") != OPTIMIZED:
        return spec
    path = schedule_path(workdir, spec.sampling.method)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"sampling.schedule=optimized but {path} does not exist; run --mode schedule "
                                f"with the same config and workdir first, or pick a named schedule "
                                f"{schedules.SCHEDULES}")
    return spec.replace(sampling=spec.sampling.with_options(schedule=path))


def _settings(spec: Spec) -> Dict[str, Any]:
    """The sampler's resolved options (spec's, else its defaults) and the number of levels to optimize."""
    method = spec.sampling.method
    if method not in optimize.SOLVERS:
        raise ValueError(f"--mode schedule optimizes the schedules of {sorted(optimize.SOLVERS)}, not "
                         f"sampling.method={method!r}; set --config.sampling.method=unipc")
    options = {**spec_lib.sampler_defaults(method), **dict(spec.sampling.options)}
    steps = spec.sampling.optimize.steps or int(options["steps"])
    init = options.get("schedule", "logSNR")
    init = init if init in schedules.SCHEDULES else "logSNR"  # a stored/optimized one: start afresh
    return {"method": method, "options": options, "steps": steps, "init": init}


def _solver_options(method: str, options: Dict[str, Any]) -> Dict[str, Any]:
    """The options the solver function itself takes (order, variant, ...), from the sampler's options."""
    import inspect
    solve, fixed = optimize.SOLVERS[method]
    params = set(inspect.signature(solve).parameters) - {"run", "x", "sigmas"} - set(fixed)
    return {k: v for k, v in options.items() if k in params}


def optimize_for(spec: Spec, sde, score_fn, device=None, dtype: torch.dtype = torch.float32) -> Dict[str, Any]:
    """{"method", "steps", "sigmas"}: the optimized levels for the spec's sampler and this score_fn."""
    s = _settings(spec)
    opt = spec.sampling.optimize
    sigmas = optimize.optimize_schedule(
        sde, score_fn, (opt.batch, *spec.shape), method=s["method"], steps=s["steps"], init=s["init"],
        sweeps=opt.sweeps, ref_steps=opt.ref_steps, sigma_max=s["options"].get("sigma_max"),
        eps=s["options"].get("eps"), seed=spec.seed, device=device, dtype=dtype,
        **_solver_options(s["method"], s["options"]))
    return {"method": s["method"], "steps": s["steps"], "sigmas": sigmas}


def store(path: str, result: Dict[str, Any], **meta: Any) -> None:
    """Add result's schedule to the file at `path` (keeping its other step counts)."""
    table: Dict[int, List[float]] = schedules.load_schedule(path) if os.path.isfile(path) else {}
    table[int(result["steps"])] = list(result["sigmas"])
    schedules.save_schedule(path, table, method=result["method"], **meta)


def run_schedule(config: Any, workdir: str, allow_fingerprint_mismatch: bool = False) -> str:
    """`--mode schedule`: optimize the spec's sampler's schedule for the newest checkpoint; returns the path."""
    spec = as_spec(config)
    ctx = eval_context.build_context(spec)
    try:
        with workdir_lock.hold_on_main(os.path.join(workdir, "checkpoints"), ctx.info):
            imported = spec.eval.import_ckpt
            source = str(imported) if imported else checkpoint.latest_checkpoint(workdir)
            if source is None:
                raise FileNotFoundError(f"no checkpoint under {workdir}/checkpoints; train first (--mode train) "
                                        f"or set eval.import_ckpt")
            step = eval_context.load_imported(ctx, source) if imported else \
                eval_context.load_ema_weights(ctx, source, allow_fingerprint_mismatch)
            path = schedule_path(workdir, spec.sampling.method)
            if ctx.info.is_main:
                with torch.no_grad():
                    dtype = next(ctx.model.parameters()).dtype
                    result = optimize_for(spec, ctx.sde, ctx.score_fn(), device=ctx.info.device, dtype=dtype)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                store(path, result, checkpoint=os.path.basename(source), checkpoint_step=step,
                      optimize=spec.sampling.optimize.to_dict())
                log.info("optimized %d-level %s schedule for step %d: %s", result["steps"], result["method"],
                         step, path)
        distributed.barrier(ctx.info)
        return path
    finally:
        distributed.cleanup()

