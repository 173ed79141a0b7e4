"""What every evaluation job shares: the run's context, the checkpoints it loads, data splits, reports.

`EvalContext` holds the spec, this process's rank and device, the SDE, the network (EMA weights loaded
per checkpoint) and the data splits, built once per run and kept for every checkpoint. `run_once`
runs a job unless its report records the same settings; rank 0 writes the report last, so a report
marks finished work.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from .. import builders, checkpoint, datasets, distributed, report
from ..models import compat
from ..models.ema import ExponentialMovingAverage
from .spec import Spec, as_spec
from .train_state import fingerprint_fields

log = logging.getLogger(__name__)


@dataclass
class EvalContext:
    config: Spec
    info: distributed.DistInfo
    sde: Any
    state: Dict[str, Any]
    shape: Tuple[int, ...]           # one item, no batch dimension
    seed: int
    data: Dict[Any, Any] = field(default_factory=dict)   # splits (and reference features) built once per run
    checkpoint_id: str = ""          # checkpoint.content_id of the loaded weights (keys the done-cache)

    def split(self, name: str, centres: bool = False):
        """The data split `name` ('train' or 'test'), built on first use and kept for every checkpoint."""
        if (name, centres) not in self.data:
            self.data[name, centres] = split(self.config, name, centres)
        return self.data[name, centres]

    @property
    def model(self) -> torch.nn.Module:
        return self.state["model"]

    def score_fn(self) -> Callable:
        self.model.eval()
        return builders.score_fn_from_model(self.config, self.sde, self.model)

    def bar(self, name: str) -> Optional[str]:
        """`name` when this process shows progress bars (rank 0 with eval.progress), else None."""
        return name if self.info.is_main and self.config.eval.progress else None


def build_context(spec: Spec) -> EvalContext:
    """Process group, SDE and network of `spec` (weights loaded later, per checkpoint)."""
    info = distributed.setup(spec.device)
    sde = builders.sde_from_config(spec)
    model = builders.build_model(spec, info.device)  # no optimizer: building Adam costs ~10 s of imports
    state = {"model": model, "ema": ExponentialMovingAverage(model.parameters(), spec.model.ema_rate),
             "optimizer": None, "step": 0}
    return EvalContext(spec, info, sde, state, spec.shape, spec.seed)


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------
def reset_ema(state: Dict[str, Any]) -> None:
    """Make the EMA equal to the loaded (EMA) weights, so EMA-swapping evaluation code is a no-op."""
    decay = getattr(state.get("ema"), "decay", 0.999)
    state["ema"] = ExponentialMovingAverage(state["model"].parameters(), decay)


def load_ema_weights(ctx: EvalContext, path: str, allow_fingerprint_mismatch: bool = False) -> int:
    """Load our checkpoint (weights-only, checksum and config fingerprint checked) and put its EMA
    weights into the model; returns its step."""
    ckpt = checkpoint.load_checkpoint(path, map_location="cpu",
                                      fingerprint_fields=fingerprint_fields(ctx.config),
                                      allow_fingerprint_mismatch=allow_fingerprint_mismatch)
    builders.load_state(ctx.state, ckpt, path)
    ctx.checkpoint_id = checkpoint.content_id(path, ckpt)
    if "ema" in ckpt:
        ctx.state["ema"].copy_to(ctx.model.parameters())
    checkpoint.require_finite_weights(path, ctx.model)  # no "nan" metrics with exit status 0
    reset_ema(ctx.state)
    return int(ckpt["step"])


def load_imported(ctx: EvalContext, path: str) -> int:
    """Load a score_sde_pytorch checkpoint's EMA weights through the models' compat importer."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"eval.import_ckpt={path!r} does not exist; point it at a score_sde_pytorch "
                                f"checkpoint_<n>.pth")
    converted = compat.load_score_sde_pytorch(path, ctx.model, which="ema")
    ctx.checkpoint_id = checkpoint.content_id(path)
    reset_ema(ctx.state)
    return int(converted.get("step", 0))


def checkpoints_in_range(workdir: str, steps: Optional[Tuple[int, Optional[int]]]) -> List[Tuple[int, str]]:
    """Our numbered checkpoints with begin <= step <= end (end None: no upper bound), by step;
    steps None: the newest one only."""
    found = checkpoint.list_checkpoints(workdir)
    if steps is None:
        if not found:
            raise FileNotFoundError(f"no checkpoint under {workdir}/checkpoints; train first (--mode train) or "
                                    f"set eval.import_ckpt")
        return found[-1:]
    begin, end = steps
    chosen = [(s, p) for s, p in found if s >= begin and (end is None or s <= end)]
    if not chosen:
        raise FileNotFoundError(
            f"no checkpoint with training step in [{begin}, {end}] under {workdir}/checkpoints (found steps "
            f"{[s for s, _ in found]}); train first or set eval.begin_ckpt/eval.end_ckpt (they are steps)")
    return chosen


# ----------------------------------------------------------------------------------------------
# Data and reports
# ----------------------------------------------------------------------------------------------
def batches(ds, indices: Sequence[int], batch_size: int, bar: Optional[str] = None) -> Iterator[torch.Tensor]:
    """Batches of ds[indices]; with a progress bar named `bar` (rank 0, eval.progress)."""
    indices = list(indices)
    starts = range(0, len(indices), batch_size)
    for start in tqdm(starts, desc=bar, leave=False, dynamic_ncols=True) if bar else starts:
        yield torch.stack([ds[i] for i in indices[start:start + batch_size]])


def split(spec: Spec, name: str, centres: bool = False):
    """The 'train' or 'test'/'eval' split; with `centres` the images' bin centres (k + 1/2)/L, unflipped,
    whatever the training transforms: the likelihoods dequantize them themselves."""
    spec = as_spec(spec)
    if centres:
        spec = spec.replace(data={"uniform_dequantization": False, "random_flip": False})
    train, evals = datasets.get_dataset(spec.replace(data={"num_classes": None}))  # images only (issue 11)
    return train if name == "train" else evals


def run_once(ctx: EvalContext, path: str, settings: Dict[str, Any], work: Callable[[], Dict[str, Any]]) -> bool:
    """Run `work` unless the report at `path` records the same settings; rank 0 writes the report.

    The skip decision is rank 0's, broadcast, so every rank takes part in the same collectives."""
    done = distributed.broadcast_object(report.is_done(path, settings) if ctx.info.is_main else None, ctx.info)
    if done:
        log.info("skipping %s (already done)", path)
        return False
    payload = work()
    if ctx.info.is_main:
        report.write_json(path, {"settings": settings, **payload})
    distributed.barrier(ctx.info)
    return True
