"""Image data sets of the 256/1024-px paper configs (LSUN, FFHQ, CelebA-HQ) from local files, and a cache.

Sources: a folder of PNG/JPEG/WebP files (searched recursively), or a .zip / .tar(.gz) archive of them
(the prepared archives users keep), listed in sorted name order. Preprocessing as the papers' pipelines:

- ``crop_resize`` (LSUN at 256 px, score_sde's ``crop_resize``): the central square of side min(H, W),
  resized to the target with antialiased bicubic filtering.
- ``resize_small`` (LSUN at 128 px, score_sde's ``resize_small`` + ``central_crop``): the shorter side
  resized to the target (antialiased bilinear), then the central target x target crop.
- ``box`` (FFHQ / CelebA-HQ, StyleGAN's dataset_tool that wrote score_sde's r08/r10 tfrecords): repeated
  2x2 box averaging, rounded to uint8 at every halving, from a square image of target * 2^k pixels.

``build_cache`` writes every preprocessed image once into one uint8 .npy array [N, C, S, S] (with a
.json sidecar naming the source and method); ``CachedImages`` memory-maps it, so loading costs no
decoding. One-time command::

    python -m score_sde.image_prep --src /data/lsun/bedroom --dst /data/bedroom_256.npy --size 256 --workers 8
"""
from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import zipfile
from concurrent.futures import ProcessPoolExecutor
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
METHODS = ("crop_resize", "resize_small", "box")
SPLIT_SEED = 0


# ----------------------------------------------------------------------------- sources
def list_images(src: str) -> List[str]:
    """Sorted names of the images in a folder (paths relative to it) or a .zip / .tar(.gz) archive."""
    if os.path.isdir(src):
        names = [os.path.relpath(os.path.join(dp, f), src) for dp, _, fs in os.walk(src) for f in fs]
    elif zipfile.is_zipfile(src):
        with zipfile.ZipFile(src) as z:
            names = z.namelist()
    elif os.path.isfile(src) and tarfile.is_tarfile(src):
        with tarfile.open(src) as t:
            names = [m.name for m in t.getmembers() if m.isfile()]
    else:
        raise FileNotFoundError(f"image source {src!r} is neither a folder nor a .zip/.tar archive; point "
                                f"--src (config.data.root) at the extracted images or the archive")
    names = sorted(n for n in names if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise FileNotFoundError(f"image source {src!r} holds no {'/'.join(IMAGE_EXTENSIONS)} files")
    return names


def read_bytes(src: str, names: Sequence[str]) -> Iterator[Tuple[str, bytes]]:
    """(name, encoded bytes) of each listed image, in the given order."""
    if os.path.isdir(src):
        for n in names:
            with open(os.path.join(src, n), "rb") as f:
                yield n, f.read()
    elif zipfile.is_zipfile(src):
        with zipfile.ZipFile(src) as z:
            for n in names:
                yield n, z.read(n)
    else:
        with tarfile.open(src) as t:
            for n in names:
                yield n, t.extractfile(n).read()


# ----------------------------------------------------------------------------- preprocessing
def crop_resize(img, size: int):
    """Central square of side min(H, W), resized to size x size (antialiased bicubic)."""
    from PIL import Image

    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return img if side == size else img.resize((size, size), Image.BICUBIC)


def resize_small(img, size: int):
    """Shorter side resized to ``size`` (antialiased bilinear, other side rounded), then the central crop."""
    from PIL import Image

    w, h = img.size
    ratio = size / min(w, h)
    nw, nh = int(round(w * ratio)), int(round(h * ratio))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def box_downsample(arr: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, C] with H = W = size * 2^k -> [size, size, C] by k rounds of 2x2 means, rounded each time."""
    h, w = arr.shape[:2]
    factor = h // size if size > 0 else 0
    if h != w or factor < 1 or h != size * factor or factor & (factor - 1):
        raise ValueError(f"method 'box' needs a square image of size * 2^k pixels; got {w}x{h} for size {size}: "
                         f"use --method crop_resize for other shapes")
    x = arr
    while x.shape[0] > size:
        y = x.astype(np.float64)
        y = (y[0::2, 0::2] + y[0::2, 1::2] + y[1::2, 0::2] + y[1::2, 1::2]) * 0.25
        x = np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return x


def preprocess(data: bytes, size: int, method: str = "crop_resize", channels: int = 3,
               name: str = "image") -> np.ndarray:
    """Encoded image bytes -> uint8 [C, size, size] with the paper's preprocessing ``method``."""
    from PIL import Image, UnidentifiedImageError

    if method not in METHODS:
        raise ValueError(f"unknown preprocessing method {method!r}; choose one of {METHODS}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot decode image {name} ({e}); remove or repair it") from None
    if method == "box":
        arr = box_downsample(np.asarray(img, dtype=np.uint8), size)
    else:
        arr = np.asarray((crop_resize if method == "crop_resize" else resize_small)(img, size), dtype=np.uint8)
    arr = arr[..., None] if arr.ndim == 2 else arr
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _preprocess_item(args: Tuple[str, bytes, int, str, int]) -> np.ndarray:
    name, data, size, method, channels = args
    return preprocess(data, size, method, channels, name)


# ----------------------------------------------------------------------------- cache
def _chunks(items: Iterator, n: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def build_cache(src: str, dst: str, size: int, method: str = "crop_resize", channels: int = 3,
                num_workers: int = 0, limit: Optional[int] = None) -> int:
    """Preprocess every image of ``src`` once into ``dst`` (.npy, uint8 [N, C, size, size]); returns N.

    Written to a temporary file and renamed at the end, so an interrupted run leaves no partial cache.
    ``num_workers`` > 0 decodes and resizes in that many processes."""
    if not dst.endswith(".npy"):
        raise ValueError(f"cache path {dst!r} must end in .npy")
    if method not in METHODS:
        raise ValueError(f"unknown preprocessing method {method!r}; choose one of {METHODS}")
    names = list_images(src)[:limit] if limit else list_images(src)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    tmp = dst + ".tmp.npy"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(names), channels, size, size))
    jobs = ((n, b, size, method, channels) for n, b in read_bytes(src, names))
    if num_workers > 0:
        with ProcessPoolExecutor(num_workers) as pool:
            i = 0
            for batch in _chunks(jobs, 64 * num_workers):     # bounded memory: a few hundred encoded images
                for arr in pool.map(_preprocess_item, batch, chunksize=16):
                    out[i] = arr
                    i += 1
    else:
        for i, job in enumerate(jobs):
            out[i] = _preprocess_item(job)
    out.flush()
    del out
    os.replace(tmp, dst)
    with open(dst + ".json", "w") as f:
        json.dump({"source": os.path.abspath(src), "method": method, "size": size, "channels": channels,
                   "count": len(names), "first": names[0], "last": names[-1]}, f, indent=1)
    return len(names)


def fixed_split(n: int, eval_fraction: float) -> Tuple[np.ndarray, np.ndarray]:
    """(train, eval) indices: a permutation fixed by seed 0, round(eval_fraction * n) >= 1 held out."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    num_eval = max(1, int(round(eval_fraction * n)))
    if n - num_eval < 1:
        raise ValueError(f"{n} image(s): need at least 2 for a train/eval split")
    perm = np.random.RandomState(SPLIT_SEED).permutation(n)
    return np.sort(perm[num_eval:]), np.sort(perm[:num_eval])


class CachedImages(Dataset):
    """Items of a cache written by ``build_cache``: float32 [C, S, S] in [0, 1].

    Level k becomes the bin centre (k + 0.5) / 256, or (k + u) / 256 with ``dequantize`` (u ~ U[0, 1));
    ``flip`` mirrors horizontally with probability 1/2 (torch's global RNG, as the other data sets)."""

    num_levels = 256

    def __init__(self, path: str, indices: Optional[Sequence[int]] = None, dequantize: bool = False,
                 flip: bool = False) -> None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image cache {path} not found; write it once with "
                                    f"python -m score_sde.image_prep --src <images> --dst {path} --size <S>")
        self.path, self.dequantize, self.flip = path, bool(dequantize), bool(flip)
        self._array: Optional[np.ndarray] = None          # opened lazily: each DataLoader worker maps its own
        arr = self.array
        if arr.dtype != np.uint8 or arr.ndim != 4:
            raise ValueError(f"{path} is not an image cache (uint8 [N, C, H, W]); got {arr.dtype} {arr.shape}")
        self.indices = np.arange(arr.shape[0]) if indices is None else np.asarray(indices, dtype=np.int64)
        self.shape = tuple(arr.shape[1:])

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        k = torch.from_numpy(np.array(self.array[self.indices[i]], dtype=np.float32))
        u = torch.rand(k.shape) if self.dequantize else torch.full(k.shape, 0.5)
        x = (k + u) / self.num_levels                       # k/256 <= x < (k+1)/256
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x


def cached_datasets(path: str, eval_fraction: float = 0.1, dequantize: bool = False,
                    flip: bool = False) -> Tuple[CachedImages, CachedImages]:
    """(train, eval) views of one cache; flips on the training view only."""
    n = np.load(path, mmap_mode="r").shape[0] if os.path.isfile(path) else 0
    if n == 0:
        CachedImages(path)                                   # raises the not-found error
    tr, ev = fixed_split(n, eval_fraction)
    return CachedImages(path, tr, dequantize, flip), CachedImages(path, ev, dequantize, False)


# ----------------------------------------------------------------------------- command line
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m score_sde.image_prep", description=__doc__.split("\n")[0])
    p.add_argument("--src", required=True, help="folder of images, or a .zip / .tar(.gz) archive of them")
    p.add_argument("--dst", required=True, help="cache file to write (.npy); a .json sidecar is written next to it")
    p.add_argument("--size", type=int, required=True, help="side of the square output images (e.g. 256)")
    p.add_argument("--method", default="crop_resize", choices=METHODS,
                   help="crop_resize: LSUN 256 | resize_small: LSUN 128 | box: FFHQ / CelebA-HQ from 1024 px")
    p.add_argument("--channels", type=int, default=3, choices=(1, 3))
    p.add_argument("--workers", type=int, default=0, help="processes that decode and resize (0: this one)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images (sorted by name)")
    a = p.parse_args(argv)
    n = build_cache(a.src, a.dst, a.size, a.method, a.channels, a.workers, a.limit)
    print(f"wrote {n} images of {a.channels}x{a.size}x{a.size} to {a.dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
