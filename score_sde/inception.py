"""Inception-v3 as used by FID (Heusel et al. 2017; Szegedy et al. 2016), pool3 features only.

This is the TF-FID variant (the 2015-12-05 graph, also used by pytorch-fid): average pools inside the
mixed blocks exclude padding, and the last block (Mixed_7c) pools its side branch with a 3x3 max pool.
Module names and state-dict keys follow torchvision/pytorch-fid (``Conv2d_1a_3x3.conv.weight``,
``Mixed_5b.branch1x1.bn.running_mean``, ...), so pytorch-fid's ``pt_inception-2015-12-05-*.pth`` file
loads directly. Weights are read only from a local file; nothing is ever downloaded.
"""
from __future__ import annotations

import os
import pickle
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

FEATURE_DIM = 2048
INPUT_SIZE = 299
IGNORED_PREFIXES = ("fc.", "AuxLogits.")  # classifier heads in full Inception files, unused by pool3

Size = Union[int, Tuple[int, int]]


class BasicConv2d(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size: Size, stride: int = 1, padding: Size = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1; out = 224 + pool_features channels."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool(x)),
        ], dim=1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], dim=1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (1x7 and 7x1); 768 channels out."""

    def __init__(self, cin: int, channels_7x7: int):
        super().__init__()
        c = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c, 1)
        self.branch7x7_2 = BasicConv2d(c, c, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c, 1)
        self.branch7x7dbl_2 = BasicConv2d(c, c, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c, c, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c, c, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dbl = x
        for i in range(1, 6):
            dbl = getattr(self, f"branch7x7dbl_{i}")(dbl)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(_avg_pool(x)),
        ], dim=1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], dim=1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3/3x1 outputs; 2048 channels out.

    ``pool="max"`` reproduces the TF-FID graph's last block (Mixed_7c), which max-pools its side branch."""

    def __init__(self, cin: int, pool: str = "avg"):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.pool == "max" else _avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(pooled),
        ], dim=1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 trunk up to the 2048-d average pool ("pool3") of the FID network."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 3, 299, 299] in [-1, 1] -> pool3 features [N, 2048]."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))


def load_inception(path: Optional[str], device: Union[str, torch.device] = "cpu") -> FIDInceptionV3:
    """The FID network with weights from the local state-dict file ``path`` (config.eval.inception_path)."""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(
            f"FID Inception weights not found at config.eval.inception_path={path!r}; download "
            f"pt_inception-2015-12-05-6726825d.pth (pytorch-fid's FID weights) once and set that key to its path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot load Inception weights {path} with weights_only=True ({type(e).__name__}); "
                         f"it must be a plain state dict of tensors") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    model = FIDInceptionV3()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"Inception weights {path} do not match the FID network: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}; expected pytorch-fid's key layout")
    return model.to(device).eval()


@torch.no_grad()
def inception_features(model: nn.Module, images: torch.Tensor, batch_size: int = 50,
                       progress: bool = False) -> torch.Tensor:
    """pool3 features [N, 2048] (float32, CPU) of images [N, C, H, W] in [0, 1] (or uint8 0..255), C in {1, 3}.

    Each batch is resized to 299x299 (bilinear), scaled to [-1, 1]; grey images are repeated to RGB.
    progress: a progress bar over the batches."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, 1 or 3, H, W] in [0, 1], got shape {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    param = next(model.parameters())
    model.eval()
    out = []
    chunks = images.split(batch_size)
    for chunk in tqdm(chunks, desc="FID features", leave=False, dynamic_ncols=True) if progress else chunks:
        x = chunk.to(device=param.device)
        x = x.to(param.dtype) / 255.0 if x.dtype == torch.uint8 else x.to(param.dtype)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        out.append(model(2.0 * x - 1.0).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, FEATURE_DIM)


def load_inception_logits(path: str) -> nn.Linear:
    """The 1008-way classifier on pool3 (``fc.weight`` [1008, 2048], ``fc.bias``) of the same weights file:
    the logits of the Inception Score (pytorch-fid's file and TF's 2015-12-05 graph both carry it)."""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"Inception weights not found at {path!r}; the Inception Score needs the FID "
                                f"weights file (pytorch-fid's pt_inception-2015-12-05-6726825d.pth)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError) as e:
        raise ValueError(f"cannot load Inception weights {path} with weights_only=True ({type(e).__name__}); "
                         f"it must be a plain state dict of tensors") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    if "fc.weight" not in state or "fc.bias" not in state:
        raise ValueError(f"{path} has no fc.weight / fc.bias: the Inception Score needs the classifier layer "
                         f"(pytorch-fid's pt_inception-2015-12-05-*.pth has it)")
    w = state["fc.weight"]
    fc = nn.Linear(w.shape[1], w.shape[0])
    fc.load_state_dict({"weight": w, "bias": state["fc.bias"]})
    return fc.eval()


@torch.no_grad()
def inception_logits(fc: nn.Linear, features: torch.Tensor) -> torch.Tensor:
    """Classifier logits [N, 1008] (float32, CPU) from pool3 features [N, 2048]."""
    return fc.to(torch.float32).cpu()(features.to(torch.float32).cpu())


def reference_stats(path: str, model: nn.Module, images: Callable[[], torch.Tensor],
                    fc: Optional[nn.Linear] = None, batch_size: int = 50) -> dict:
    """A data set's reference features, computed once and cached in ``path`` (.npz, keys pool_3 / logits).

    ``images`` is called only when ``path`` does not exist yet; it returns the reference images as uint8
    [N, C, H, W] (or floats in [0, 1]). Every later call, for any checkpoint, reads the file."""
    from . import metrics
    if not os.path.isfile(path):
        feats = inception_features(model, images(), batch_size=batch_size)
        logits = inception_logits(fc, feats) if fc is not None else None
        metrics.save_reference_stats(path, feats, logits)
    return metrics.load_reference_stats(path)
