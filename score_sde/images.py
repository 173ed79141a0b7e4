"""Pictures of samples: image grids (PNG / uint8 arrays for TensorBoard) and 2-D scatter plots (PIL only)."""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence, Tuple

import numpy as np
import torch


def _check_images(x: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(x) or x.ndim != 4 or x.shape[0] < 1 or x.shape[1] not in (1, 3):
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"images must be a tensor [N, C, H, W] with N >= 1 and C in (1, 3), got {shape}")
    return x.detach().float().cpu()


def image_grid(x: torch.Tensor, nrow: Optional[int] = None, padding: int = 1, scale: int = 1) -> np.ndarray:
    """uint8 [H', W', C] grid of images x [N, C, H, W] in [0, 1] (clipped), nrow per row (default ~sqrt N).

    Tiles are separated by `padding` black pixels and enlarged `scale` times (nearest neighbour)."""
    x = _check_images(x)
    if scale < 1 or padding < 0:
        raise ValueError(f"scale must be >= 1 and padding >= 0, got scale={scale}, padding={padding}")
    if scale > 1:
        x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    n, c, h, w = x.shape
    ncol = int(nrow) if nrow else int(math.ceil(math.sqrt(n)))
    if ncol < 1:
        raise ValueError(f"nrow must be a positive integer, got {nrow}")
    nrows = int(math.ceil(n / ncol))
    grid = torch.zeros(c, nrows * (h + padding) + padding, ncol * (w + padding) + padding)
    for k in range(n):
        r, q = divmod(k, ncol)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, top:top + h, left:left + w] = x[k]
    arr = (grid.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)  # round to the nearest level
    return arr.permute(1, 2, 0).numpy()


def save_image_grid(x: torch.Tensor, path: str, nrow: Optional[int] = None, scale: Optional[int] = None) -> str:
    """Write the grid of x [N, C, H, W] in [0, 1] to a PNG; small images are enlarged to >= 32 px tiles."""
    from PIL import Image

    x = _check_images(x)
    scale = scale if scale is not None else max(1, 32 // x.shape[-1])
    arr = image_grid(x, nrow=nrow, scale=scale)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)
    return path


def _bounds(points: np.ndarray, margin: float = 0.05) -> Tuple[float, float, float, float]:
    lo, hi = points.min(axis=0), points.max(axis=0)
    span = np.maximum(hi - lo, 1e-6)
    lo, hi = lo - margin * span, hi + margin * span
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def scatter_png(points: torch.Tensor, path: str, size: int = 512,
                bounds: Optional[Sequence[float]] = None, radius: int = 1) -> str:
    """Scatter plot of 2-D points [N, 2] as a white PNG with black dots; bounds = (xmin, xmax, ymin, ymax).

    Non-finite points are skipped (a diverged sampler still gets a picture of what remains)."""
    from PIL import Image, ImageDraw

    pts = np.asarray(torch.as_tensor(points).detach().cpu().double())
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"scatter_png needs points of shape [N, 2], got {tuple(pts.shape)}")
    pts = pts[np.isfinite(pts).all(axis=1)]
    xmin, xmax, ymin, ymax = bounds if bounds is not None else (_bounds(pts) if len(pts) else (-1, 1, -1, 1))
    if not (xmax > xmin and ymax > ymin):
        raise ValueError(f"scatter_png bounds must satisfy xmin < xmax and ymin < ymax, got {bounds}")
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    u = (pts[:, 0] - xmin) / (xmax - xmin) * (size - 1)
    v = (ymax - pts[:, 1]) / (ymax - ymin) * (size - 1)  # image rows grow downwards
    for a, b in zip(u, v):
        if 0 <= a < size and 0 <= b < size:
            draw.ellipse((a - radius, b - radius, a + radius, b + radius), fill="black")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
    return path
