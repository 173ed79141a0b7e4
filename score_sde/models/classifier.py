"""Noise-conditional classifiers p_t(c | x_t) for classifier guidance (Song et al. 2021, appendix I.1).

Both take (x_t, log_sigma) with sigma(t) = s(t)/m(t), the noise level every SDE shares as a scaled VE process, so
one classifier serves VE, VP and sub-VP alike; `score_sde.classifier` trains them and wraps them into the
log_prob_fn(x, t) that `conditioning.classifier_guidance` takes.

MLPClassifier         low-dimensional (toy) data: sinusoidal embedding of log sigma added to every hidden layer.
WideResNetClassifier  images: the paper's Wide-ResNet-28-10 with GroupNorm, conditioned on the noise level by
                      Gaussian Fourier features of log sigma added inside every residual block (as the score
                      networks' time embedding); depth=10, widen_factor=2 is a small one for digits.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from . import layers


class MLPClassifier(nn.Module):
    def __init__(self, dim: int, num_classes: int, hidden_dims: Sequence[int] = (128, 128),
                 embedding_dim: int = 64) -> None:
        super().__init__()
        if dim < 1 or num_classes < 2 or not hidden_dims:
            raise ValueError(f"MLPClassifier needs dim >= 1, num_classes >= 2 and a hidden layer, got {dim}, "
                             f"{num_classes}, {hidden_dims}")
        self.embedding_dim, self.act = embedding_dim, nn.SiLU()
        widths = [dim, *hidden_dims]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.noise_proj = nn.ModuleList(nn.Linear(embedding_dim, b) for b in hidden_dims)
        self.out = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] of x [B, d] at noise level exp(log_sigma) [B]."""
        emb = layers.timestep_embedding(log_sigma.float() * 100.0, self.embedding_dim).to(x.dtype)
        h = x.reshape(x.shape[0], -1)
        for layer, proj in zip(self.hidden, self.noise_proj):
            h = self.act(layer(h) + proj(emb))
        return self.out(h)


class _WideBlock(nn.Module):
    """Pre-activation wide residual block with the noise embedding added after the first convolution."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = layers.group_norm(in_ch, 32), layers.group_norm(out_ch, 32)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.skip = nn.Conv2d(in_ch, out_ch, 1, stride) if (stride != 1 or in_ch != out_ch) else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x))) + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.conv2(self.act(self.norm2(h)))


class WideResNetClassifier(nn.Module):
    def __init__(self, channels: int, num_classes: int, depth: int = 28, widen_factor: int = 10,
                 embedding_dim: int = 128, fourier_scale: float = 16.0) -> None:
        super().__init__()
        if (depth - 4) % 6 or depth < 10 or widen_factor < 1 or num_classes < 2:
            raise ValueError(f"Wide-ResNet needs depth = 6n + 4 >= 10, widen_factor >= 1 and >= 2 classes, got "
                             f"depth={depth}, widen_factor={widen_factor}, num_classes={num_classes}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.fourier = layers.GaussianFourierProjection(embedding_dim // 2, fourier_scale)
        self.embed = nn.Sequential(nn.Linear(embedding_dim, embedding_dim), nn.SiLU(),
                                   nn.Linear(embedding_dim, embedding_dim))
        self.conv_in = nn.Conv2d(channels, widths[0], 3, 1, 1)
        blocks, in_ch = [], widths[0]
        for stage, out_ch in enumerate(widths[1:]):
            for i in range(n):
                blocks.append(_WideBlock(in_ch, out_ch, 2 if (i == 0 and stage > 0) else 1, embedding_dim))
                in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.norm_out, self.act = layers.group_norm(in_ch, 32), nn.SiLU()
        self.out = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] of images x [B, C_in, H, W] at noise level exp(log_sigma) [B]."""
        emb = self.embed(self.fourier(log_sigma.float()).to(x.dtype))
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(self.act(self.norm_out(h)).mean((2, 3)))
