"""Data sets: 2-D toys (exact densities where known), sklearn digits, CIFAR-10 files, image folders.

Images come out as float32 [C, H, W] in [0, 1]. A pixel with integer level k in 0..L-1 maps to
``(k + 0.5) / L`` (bin centre), or to ``(k + u) / L`` with u ~ U[0, 1) per value when
``config.data.uniform_dequantization`` is set, so the dequantized density lives on [0, 1]^D and
bits/dim are well defined (Theis et al. 2016). 2-D toys come out as float32 [d].
The entry points take a Spec, its DataSpec or a config (read once by the spec: every default,
per-dataset geometry included, is the spec's); everything below them reads the typed DataSpec.
Randomness inside ``__getitem__`` (flip, dequantization) uses torch's global RNG, so DataLoader
worker seeding and checkpointed RNG state govern it.
"""
from __future__ import annotations

import io
import math
import os
import pickle
import tarfile
import zlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .pipeline.spec import DataSpec, as_spec, dataset_geometry

# every config key this module reads (documented in README.md, section Data)
CONFIG_KEYS = (
    "data.dataset", "data.root", "data.image_size", "data.num_channels", "data.num_levels",
    "data.uniform_dequantization", "data.random_flip", "data.centered", "data.eval_fraction",
    "data.num_train", "data.num_eval", "data.seed", "data.num_classes",
)
TOY_DATASETS = ("toy_ring", "checkerboard", "moons", "swiss_roll")
IMAGE_DATASETS = ("digits", "cifar10", "image_folder")
DATASETS = TOY_DATASETS + IMAGE_DATASETS
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
SPLIT_SEED = 0  # fixed permutation for the digits and image-folder train/eval splits
DIGITS_NUM_EVAL = 300
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = ("test_batch",)


def _data(config: Any) -> DataSpec:
    """The typed data section of a Spec, a DataSpec or a config (through the spec, once)."""
    return config if isinstance(config, DataSpec) else as_spec(config).data


# ----------------------------------------------------------------------------------------------
# Dataset classes
# ----------------------------------------------------------------------------------------------
class PointDataset(Dataset):
    """Fixed float32 points [N, d]; item i is the row [d]."""

    num_levels = None

    def __init__(self, points: torch.Tensor):
        self.points = points.to(torch.float32).contiguous()
        self.shape = tuple(self.points.shape[1:])

    def __len__(self) -> int:
        return self.points.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.points[i]


class LabeledDataset(Dataset):
    """(item, label) pairs: an image data set and its class labels [N] (long), for data.num_classes.

    `unlabeled` is the wrapped data set (the same items, same augmentation draws)."""

    def __init__(self, unlabeled: Dataset, labels: torch.Tensor, num_classes: int):
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.shape != (len(unlabeled),):
            raise ValueError(f"{len(unlabeled)} items but labels of shape {tuple(labels.shape)}")
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"the data hold class labels up to {int(labels.max())} but config.data.num_classes="
                             f"{num_classes}; set data.num_classes={int(labels.max()) + 1}")
        self.unlabeled, self.labels, self.num_classes = unlabeled, labels, int(num_classes)
        self.shape, self.num_levels = unlabeled.shape, unlabeled.num_levels

    def __len__(self) -> int:
        return len(self.unlabeled)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.unlabeled[i], self.labels[i]


class _ImageDataset(Dataset):
    """Shared per-item transform: integer levels -> [0, 1], dequantization, train-only flip."""

    def __init__(self, num_levels: int, shape: Tuple[int, int, int], dequantize: bool, flip: bool):
        self.num_levels, self.shape = int(num_levels), tuple(shape)
        self.dequantize, self.flip = bool(dequantize), bool(flip)

    def _levels(self, i: int) -> torch.Tensor:  # integer levels [C, H, W]
        raise NotImplementedError

    def __getitem__(self, i: int) -> torch.Tensor:
        k = self._levels(i).to(torch.float32)
        u = torch.rand(k.shape) if self.dequantize else torch.full(k.shape, 0.5)
        x = (k + u) / self.num_levels  # k/L <= x < (k+1)/L
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x


class ArrayImageDataset(_ImageDataset):
    """Images held in memory as integer levels [N, C, H, W]."""

    def __init__(self, levels: torch.Tensor, num_levels: int, dequantize: bool, flip: bool):
        super().__init__(num_levels, tuple(levels.shape[1:]), dequantize, flip)
        self.levels = levels

    def __len__(self) -> int:
        return self.levels.shape[0]

    def _levels(self, i: int) -> torch.Tensor:
        return self.levels[i]


class FileImageDataset(_ImageDataset):
    """Images read lazily from files: mode RGB/L, centre-cropped to a square, resized (bicubic)."""

    def __init__(self, files: Sequence[str], image_size: int, num_channels: int, dequantize: bool, flip: bool):
        super().__init__(256, (num_channels, image_size, image_size), dequantize, flip)
        self.files, self.image_size = list(files), int(image_size)
        self.mode = "L" if num_channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.files)

    def _levels(self, i: int) -> torch.Tensor:
        return load_image_levels(self.files[i], self.image_size, self.mode)


def load_image_levels(path: str, image_size: int, mode: str) -> torch.Tensor:
    """uint8 [C, S, S] of an image file: converted to ``mode``, centre-cropped square, resized."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert(mode)
    except Image.DecompressionBombError as e:  # Pillow's guard against huge pixel counts
        raise ValueError(f"image {path} is over Pillow's decompression-bomb limit ({str(e).splitlines()[0]}); "
                         f"remove or shrink it") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {path} ({e}); remove or repair the file") from None
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != image_size:
        img = img.resize((image_size, image_size), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy())


# ----------------------------------------------------------------------------------------------
# 2-D toys
# ----------------------------------------------------------------------------------------------
def _ring(n: int, g: torch.Generator) -> torch.Tensor:
    return ring_density().sample(n, generator=g)


def _checkerboard(n: int, g: torch.Generator) -> torch.Tensor:
    """Uniform on the 8 dark unit squares of a 4x4 board on [-2, 2]^2 (cells with i + j even)."""
    cells = torch.tensor([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0], dtype=torch.float64)
    c = cells[torch.randint(len(cells), (n,), generator=g)]
    return c - 2.0 + torch.rand(n, 2, generator=g, dtype=torch.float64)


def _moons(n: int, g: torch.Generator, noise: float = 0.1) -> torch.Tensor:
    """Two interleaved half circles (upper: (cos a, sin a); lower: (1 - cos a, 0.5 - sin a)), centred, x2."""
    a = math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    lower = torch.rand(n, generator=g, dtype=torch.float64) < 0.5
    x = torch.where(lower, 1.0 - a.cos(), a.cos())
    y = torch.where(lower, 0.5 - a.sin(), a.sin())
    pts = torch.stack([x - 0.5, y - 0.25], dim=1) * 2.0
    return pts + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)


def _swiss_roll(n: int, g: torch.Generator, noise: float = 0.05) -> torch.Tensor:
    """2-D swiss roll: angle a = 1.5 pi (1 + 2u), point (a cos a, a sin a) / 5 plus Gaussian noise."""
    a = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=torch.float64))
    pts = torch.stack([a * a.cos(), a * a.sin()], dim=1) / 5.0
    return pts + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)


TOY_SAMPLERS: Dict[str, Callable[[int, torch.Generator], torch.Tensor]] = {
    "toy_ring": _ring, "checkerboard": _checkerboard, "moons": _moons, "swiss_roll": _swiss_roll,
}


def ring_density():
    """The toy_ring data density (unscaled): score_sde.toy.ring_mixture() with its defaults."""
    from .toy import ring_mixture

    return ring_mixture()


def sample_toy(name: str, n: int, seed: int) -> torch.Tensor:
    """``n`` float64 points of toy ``name``, a deterministic function of ``seed``."""
    if n < 1:
        raise ValueError(f"toy data set size must be >= 1, got {n}; set config.data.num_train/num_eval")
    return TOY_SAMPLERS[name](int(n), torch.Generator().manual_seed(int(seed)))


def _toy_datasets(d: DataSpec) -> Tuple[Dataset, Dataset]:
    if d.num_classes is not None:
        raise ValueError(f"toy data set {d.dataset!r} has no class labels; unset data.num_classes (labelled toys: "
                         f"score_sde.toy_conditional)")
    train = sample_toy(d.dataset, d.num_train, 2 * d.seed)
    evals = sample_toy(d.dataset, d.num_eval, 2 * d.seed + 1)
    return PointDataset(train), PointDataset(evals)


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------
def _check_geometry(d: DataSpec) -> None:
    """A data set of fixed geometry (digits, CIFAR-10) is never resized: config.data must match it."""
    want = dataset_geometry(d.dataset)
    channels, size, levels = want["num_channels"], want["image_size"], want["num_levels"]
    got = (d.num_channels, d.image_size, d.num_levels)
    if got != (channels, size, levels):
        raise ValueError(f"{d.dataset} images are {channels} channel(s), {size}x{size}, {levels} levels; config.data "
                         f"asks num_channels={got[0]}, image_size={got[1]}, num_levels={got[2]}: set "
                         f"num_channels={channels}, image_size={size}, num_levels={levels}")


def fixed_split(n: int, num_eval: int) -> Tuple[np.ndarray, np.ndarray]:
    """Disjoint (train, eval) index arrays from a permutation fixed by SPLIT_SEED."""
    perm = np.random.RandomState(SPLIT_SEED).permutation(n)
    return np.sort(perm[num_eval:]), np.sort(perm[:num_eval])


def _image_pair(levels: torch.Tensor, tr: np.ndarray, ev: np.ndarray, d: DataSpec):
    """(train, eval) in-memory image sets of the checked geometry; only the train set is flipped."""
    deq, flip = d.uniform_dequantization, d.random_flip
    return (ArrayImageDataset(levels[torch.from_numpy(tr)], d.num_levels, deq, flip),
            ArrayImageDataset(levels[torch.from_numpy(ev)], d.num_levels, deq, False))


def _digits_datasets(d: DataSpec) -> Tuple[Dataset, Dataset]:
    from sklearn.datasets import load_digits

    _check_geometry(d)
    digits = load_digits()
    levels = torch.from_numpy(digits.images.astype(np.int64)).unsqueeze(1)  # [1797, 1, 8, 8], 0..16
    tr, ev = fixed_split(levels.shape[0], DIGITS_NUM_EVAL)
    return _with_labels(_image_pair(levels, tr, ev, d), torch.from_numpy(digits.target.astype(np.int64)), tr, ev, d)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches: plain containers and numpy arrays only, never other code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
               ("numpy._core.numeric", "_frombuffer"), ("copy_reg", "_reconstructor"),
               ("copyreg", "_reconstructor"), ("builtins", "bytearray")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def _parse_cifar_labels(raw: bytes, where: str) -> torch.Tensor:
    """The [N] class labels (0..9) of a CIFAR-10 batch (parsed and checked like its images)."""
    _parse_cifar_batch(raw, where)
    batch = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    return torch.tensor([int(v) for v in batch[b"labels"]], dtype=torch.long)


def _parse_cifar_batch(raw: bytes, where: str) -> torch.Tensor:
    expected = "a pickled dict with b'data' uint8 [N, 3072] and b'labels' (N ints)"
    try:
        batch = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:
        raise ValueError(f"CIFAR-10 batch {where} is malformed ({type(e).__name__}: {e}); expected {expected}") from None
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(b"labels") if isinstance(batch, dict) else None
    data = None if data is None else np.asarray(data)
    if data is None or labels is None or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != data.shape[0] \
            or data.dtype != np.uint8:
        raise ValueError(f"CIFAR-10 batch {where} is malformed; expected {expected}")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())


def _cifar_source(root: str) -> Tuple[str, Optional[str]]:
    """(folder or archive path, member prefix inside the archive) of the CIFAR-10 python files."""
    for folder in (os.path.join(root, CIFAR_DIR), root):
        if os.path.isfile(os.path.join(folder, CIFAR_TEST[0])):
            return folder, None
    for archive in (os.path.join(root, CIFAR_ARCHIVE), root):
        if os.path.isfile(archive) and archive.endswith((".tar.gz", ".tgz", ".tar")):
            return archive, CIFAR_DIR
    raise FileNotFoundError(
        f"CIFAR-10 not found under config.data.root={root!r}: expected {CIFAR_ARCHIVE} or the extracted folder "
        f"{CIFAR_DIR}/ holding {', '.join(CIFAR_TRAIN + CIFAR_TEST)}")


def load_cifar10_levels(root: str, labels: bool = False) -> Tuple[torch.Tensor, ...]:
    """uint8 (train [50000, 3, 32, 32], test [10000, 3, 32, 32]) from the python archive or folder;
    labels=True adds their class labels (train [50000], test [10000], long)."""
    src, prefix = _cifar_source(root)
    names = CIFAR_TRAIN + CIFAR_TEST
    raws: Dict[str, bytes] = {}
    if prefix is None:
        for n in names:
            path = os.path.join(src, n)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"CIFAR-10 file {path} is missing; {src} must hold {', '.join(names)}")
            with open(path, "rb") as f:
                raws[n] = f.read()
    else:
        try:
            with tarfile.open(src) as tar:
                for n in names:
                    try:
                        member = tar.extractfile(f"{prefix}/{n}")
                    except KeyError:
                        member = None
                    if member is None:
                        raise FileNotFoundError(f"CIFAR-10 archive {src} lacks {prefix}/{n}; expected "
                                                f"{prefix}/{{{', '.join(names)}}}")
                    raws[n] = member.read()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            if isinstance(e, FileNotFoundError):
                raise
            lines = str(e).splitlines() or [type(e).__name__]  # tarfile lists one line per method tried
            detail = next((ln.strip("- ") for ln in lines if ln.startswith("- method gz:")), lines[0])
            raise ValueError(f"CIFAR-10 archive {src} is not a readable tar.gz ({detail}); re-download "
                             f"{CIFAR_ARCHIVE}") from None
    train = torch.cat([_parse_cifar_batch(raws[n], f"{src}:{n}") for n in CIFAR_TRAIN])
    test = torch.cat([_parse_cifar_batch(raws[n], f"{src}:{n}") for n in CIFAR_TEST])
    if not labels:
        return train, test
    return (train, test, torch.cat([_parse_cifar_labels(raws[n], f"{src}:{n}") for n in CIFAR_TRAIN]),
            torch.cat([_parse_cifar_labels(raws[n], f"{src}:{n}") for n in CIFAR_TEST]))


def _cifar_datasets(d: DataSpec) -> Tuple[Dataset, Dataset]:
    _check_geometry(d)
    if d.num_classes is None:
        train, test = load_cifar10_levels(str(d.root))
        classes = None
    else:
        train, test, *labels = load_cifar10_levels(str(d.root), labels=True)
        classes = torch.cat(labels)
    levels = torch.cat([train, test])
    n = train.shape[0]
    tr, ev = np.arange(n), np.arange(n, levels.shape[0])
    return _with_labels(_image_pair(levels, tr, ev, d), classes, tr, ev, d)


def find_images(root: str) -> List[str]:
    """All PNG/JPEG files under ``root`` (recursive), sorted by path."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder config.data.root={root!r} does not exist; point it at a folder "
                                f"of {'/'.join(IMAGE_EXTENSIONS)} files")
    found = [os.path.join(dp, f) for dp, _, fs in os.walk(root) for f in fs if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not found:
        raise FileNotFoundError(f"image folder {root!r} holds no {'/'.join(IMAGE_EXTENSIONS)} files")
    return sorted(found)


def _folder_datasets(d: DataSpec) -> Tuple[Dataset, Dataset]:
    channels, size = d.num_channels, d.image_size
    if channels not in (1, 3):
        raise ValueError(f"config.data.num_channels must be 1 (grey) or 3 (RGB) for image_folder, got {channels}")
    if d.num_levels != 256:
        raise ValueError("image_folder images are 8-bit: set config.data.num_levels=256")
    frac = d.eval_fraction
    if not 0.0 < frac < 1.0:
        raise ValueError(f"config.data.eval_fraction must be in (0, 1), got {frac}")
    files = find_images(str(d.root))
    num_eval = max(1, int(round(frac * len(files))))
    if len(files) - num_eval < 1:
        raise ValueError(f"image folder {d.root!r} has {len(files)} image(s): need at least 2 for a train/eval split")
    tr, ev = fixed_split(len(files), num_eval)
    deq, flip = d.uniform_dequantization, d.random_flip
    pair = (FileImageDataset([files[i] for i in tr], size, channels, deq, flip),
            FileImageDataset([files[i] for i in ev], size, channels, deq, False))
    classes = folder_labels(str(d.root), files) if d.num_classes is not None else None
    return _with_labels(pair, classes, tr, ev, d)


def folder_labels(root: str, files: Sequence[str]) -> torch.Tensor:
    """Class of each file: the index of its top-level subfolder of `root` in sorted order (one subfolder
    per class, as torchvision's ImageFolder)."""
    tops = [os.path.relpath(f, root).split(os.sep) for f in files]
    loose = [f for f, parts in zip(files, tops) if len(parts) < 2]
    if loose:
        raise ValueError(f"image folder {root!r} has images outside class subfolders (e.g. {loose[0]}); with "
                         f"data.num_classes set, put each class in its own subfolder")
    names = sorted({parts[0] for parts in tops})
    index = {n: i for i, n in enumerate(names)}
    return torch.tensor([index[parts[0]] for parts in tops], dtype=torch.long)


def _with_labels(pair: Tuple[Dataset, Dataset], labels: Optional[torch.Tensor], tr: np.ndarray, ev: np.ndarray,
                 d: DataSpec) -> Tuple[Dataset, Dataset]:
    """The (train, eval) pair as is without data.num_classes; else LabeledDatasets over `labels`."""
    c = d.num_classes
    if c is None:
        return pair
    if labels is None:
        raise ValueError(f"data set {d.dataset!r} has no class labels; unset data.num_classes")
    return (LabeledDataset(pair[0], labels[torch.from_numpy(tr)], c),
            LabeledDataset(pair[1], labels[torch.from_numpy(ev)], c))


def _cached_datasets(d: DataSpec) -> Tuple[Dataset, Dataset]:
    """data.cache (issue 14): image_prep's .npy cache, written once from data.root (data.preprocess,
    data.num_workers) when missing; split by data.eval_fraction as image_prep.cached_datasets does."""
    from . import image_prep
    path, root = str(d.cache), d.root
    channels, size = d.num_channels, d.image_size
    if not os.path.isfile(path) and root:
        image_prep.build_cache(str(root), path, size, d.preprocess, channels, d.num_workers)
    train, evals = image_prep.cached_datasets(path, d.eval_fraction, d.uniform_dequantization, d.random_flip)
    if train.shape != (channels, size, size) or d.num_levels != 256:
        raise ValueError(f"data.cache {path} holds 8-bit images of shape {train.shape}, the config wants "
                         f"{(channels, size, size)} with num_levels={d.num_levels}; set "
                         f"data.num_channels/image_size/num_levels=256 to match or rebuild the cache")
    return train, evals


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------
def get_dataset(config: Any) -> Tuple[Dataset, Dataset]:
    """(train_ds, eval_ds) for ``config.data.dataset``; every item is a float32 tensor.

    Each returned data set has ``.shape`` (item shape) and ``.num_levels`` (None for toys)."""
    d = _data(config)
    if d.dataset in TOY_DATASETS:
        return _toy_datasets(d)
    if d.cache:
        return _cached_datasets(d)
    if d.dataset == "digits":
        return _digits_datasets(d)
    if d.dataset == "cifar10":
        return _cifar_datasets(d)
    return _folder_datasets(d)


def get_data_scaler(config: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Data -> model space: x -> 2x - 1 (maps [0, 1] to [-1, 1]) if config.data.centered, else identity."""
    if _data(config).centered:
        return lambda x: x * 2.0 - 1.0
    return lambda x: x


def get_data_inverse_scaler(config: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Model space -> data: the inverse of :func:`get_data_scaler`."""
    if _data(config).centered:
        return lambda x: (x + 1.0) / 2.0
    return lambda x: x


def get_toy_density(config: Any):
    """The exact GaussianMixture of toy_ring in the scaled (model) space, else None.

    With centered data the scaler x -> 2x - 1 maps N(mu, S) to N(2 mu - 1, 4 S)."""
    d = _data(config)
    if d.dataset != "toy_ring":
        return None
    gm = ring_density()
    if not d.centered:
        return gm
    return type(gm)(gm.weights, 2.0 * gm.means - 1.0, 4.0 * gm.covs)
