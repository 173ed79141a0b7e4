"""What training shows and leaves beside its checkpoints: TensorBoard scalars and sample grids, the
rank-0 progress bar, and the snapshot samples of samples/iter_<step>/ (drawn with the spec's sampler
and the EMA weights)."""
from __future__ import annotations

import contextlib
import os
from typing import Any, Dict, Optional

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .. import builders, checkpoint, conditioning, datasets, distributed, images
from ..atomic import atomic_write
from .spec import Spec, TrainingSpec

SNAPSHOT_IMAGES = 64   # images drawn for the snapshot grid
SNAPSHOT_POINTS = 1000  # points drawn for a 2-D scatter snapshot


class Logger:
    """TensorBoard scalars/images and a tqdm bar on rank 0; silent elsewhere. An OSError of TensorBoard's
    writer thread (disk full, ...) surfaces naming the tensorboard folder (main.py prints one line)."""

    def __init__(self, workdir: str, info: distributed.DistInfo, start: int, total: int, progress: bool = True):
        self.writer = self.bar = None
        self.folder = os.path.join(workdir, "tensorboard")
        if info.is_main:
            from torch.utils.tensorboard import SummaryWriter  # imports TensorFlow's stubs: rank 0 only

            with self._named():
                self.writer = SummaryWriter(self.folder)
            if progress:
                self.bar = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)

    @contextlib.contextmanager
    def _named(self):
        try:
            yield
        except OSError as e:
            if e.filename is not None:
                raise
            raise OSError(e.errno, e.strerror or str(e), self.folder) from None

    def scalars(self, step: int, values: Dict[str, float], prefix: str = "") -> None:
        if self.writer is not None:
            with self._named():
                for k, v in values.items():
                    self.writer.add_scalar(prefix + k, v, step)

    def advance(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)

    def image(self, step: int, array: np.ndarray) -> None:
        if self.writer is not None:
            with self._named():
                self.writer.add_image("samples", array, step, dataformats="HWC")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            writer, self.writer = self.writer, None
            with self._named():
                writer.close()


def snapshot_missing(workdir: str, s: TrainingSpec, step: int) -> bool:
    """True when a resumed run's step has a numbered checkpoint but its snapshot samples were never
    written (killed while sampling): the weights are that checkpoint's, so they are drawn now."""
    if not s.snapshot_sampling or step == 0 or (step % s.snapshot_freq and step != s.n_iters):
        return False
    done = os.path.isfile(os.path.join(workdir, "samples", f"iter_{step}", "samples.npz"))
    return not done and os.path.isfile(checkpoint.checkpoint_path(workdir, step))


def log_snapshot(logger: "Logger", spec: Spec, sde, state: Dict[str, Any], workdir: str, step: int,
                 info: distributed.DistInfo) -> None:
    """snapshot_samples inside a forked RNG (training's stream is untouched), its grid to TensorBoard;
    every rank waits for rank 0's files."""
    with distributed.forked_rng(info):
        image = snapshot_samples(spec, sde, state, workdir, step, info)
    if image is not None:
        logger.image(step, image)
    distributed.barrier(info)


def snapshot_samples(spec: Spec, sde, state: Dict[str, Any], workdir: str, step: int,
                     info: distributed.DistInfo) -> Optional[np.ndarray]:
    """Draw samples with the configured sampler and EMA weights; write samples/iter_<step>/ (rank 0).

    Returns the picture as a uint8 HWC array for TensorBoard."""
    if not info.is_main:
        return None
    shape = spec.shape
    n = SNAPSHOT_POINTS if len(shape) == 1 else SNAPSHOT_IMAGES
    model, ema = distributed.unwrap(state["model"]), state["ema"]
    sampler = builders.build_sampler(spec, sde, (n, *shape), device=info.device)
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        score_fn = builders.score_fn_from_model(spec, sde, model)
        if spec.data.num_classes:  # a conditional model: row i of the grid is class i mod num_classes
            cond = conditioning.conditional_score_fn(sde, model, continuous=spec.training.continuous,
                                                     prediction=spec.model.prediction)
            score_fn = conditioning.with_labels(cond, torch.arange(n, device=info.device) % spec.data.num_classes)
        g = torch.Generator(device=info.device).manual_seed(spec.seed * 104729 + step)
        with torch.no_grad():
            x, _ = sampler(score_fn, generator=g)
    finally:
        ema.restore(model.parameters())
    x = datasets.get_data_inverse_scaler(spec)(x).float().cpu()
    folder = os.path.join(workdir, "samples", f"iter_{step}")
    os.makedirs(folder, exist_ok=True)
    with atomic_write(os.path.join(folder, "samples.npz"), "wb") as f:  # never a truncated file
        np.savez_compressed(f, samples=x.numpy())
    if len(shape) == 1:
        path = images.scatter_png(x[:, :2], os.path.join(folder, "samples.png"))
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    images.save_image_grid(x.clamp(0, 1), os.path.join(folder, "samples.png"))
    grid = images.image_grid(x.clamp(0, 1), scale=max(1, 32 // shape[-1]))
    return np.repeat(grid, 3, axis=-1) if grid.shape[-1] == 1 else grid
