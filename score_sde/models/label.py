"""Class labels for conditional networks: an embedding with a null class, and label dropout.

A network built with num_classes = C > 0 owns `class_embed`, an nn.Embedding of C + 1 rows: classes 0..C-1 and
the null class C ("no label"), whose output is the unconditional score used by classifier-free guidance (Ho &
Salimans 2022). The embedding is added to the network's noise embedding; it starts at zero, so a fresh
conditional network computes what its unconditional twin computes. num_classes None or 0 builds no embedding:
the network and its state dict are those of the unconditional model.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..utils import rand_like


def check_num_classes(num_classes: Optional[int]) -> int:
    """None/0 -> 0 (unconditional); otherwise a positive integer."""
    if num_classes is None:
        return 0
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be None, 0 (unconditional) or a positive integer, got {num_classes!r}")
    return num_classes


def class_embedding(num_classes: Optional[int], dim: int) -> Optional[nn.Embedding]:
    """nn.Embedding(C + 1, dim) initialised to zero, or None when unconditional."""
    c = check_num_classes(num_classes)
    if c == 0:
        return None
    embed = nn.Embedding(c + 1, dim)
    nn.init.zeros_(embed.weight)
    return embed


def embed_class(embed: Optional[nn.Embedding], y: Optional[torch.Tensor], batch: int) -> Optional[torch.Tensor]:
    """The [B, dim] class embedding of labels y (None -> the null class), or None for unconditional networks."""
    if embed is None:
        if y is not None:
            raise ValueError("this network is unconditional (num_classes=None); build it with num_classes > 0 "
                             "to pass class labels y")
        return None
    null = embed.num_embeddings - 1
    if y is None:
        y = torch.full((batch,), null, dtype=torch.long, device=embed.weight.device)
    if y.shape != (batch,) or y.is_floating_point():
        raise ValueError(f"class labels y must be an integer tensor of shape [batch]=[{batch}], got "
                         f"{y.dtype} {tuple(y.shape)}")
    if (y < 0).any() or (y > null).any():
        raise ValueError(f"class labels must lie in [0, {null}] ({null} = the null class), got {y.unique().tolist()}")
    return embed(y.long())


def drop_labels(y: torch.Tensor, p: float, num_classes: int,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Replace each label by the null class num_classes with probability p (classifier-free training)."""
    if not 0 <= p <= 1:
        raise ValueError(f"label dropout probability must lie in [0, 1] (0.1-0.2 is usual), got {p!r}")
    drop = rand_like(y.double(), generator) < p
    return torch.where(drop, torch.full_like(y, num_classes), y)
