"""A small time-conditional MLP for low-dimensional (e.g. 2-D toy) data.

Input [B, d] and labels [B]; the label is embedded by the transformer sinusoid, mapped by a
linear layer and added to every hidden layer (a 1-D analogue of the U-Nets' conditioning).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from . import layers, register_model
from .label import class_embedding, embed_class


class ConditionalMLP(nn.Module):
    def __init__(self, dim: int, hidden_dims: Sequence[int] = (128, 128, 128), embedding_dim: int = 64,
                 nonlinearity: str = "swish", label_scale: float = 1.0, num_classes: Optional[int] = None,
                 learned_variance: bool = False) -> None:
        super().__init__()
        if dim < 1 or not hidden_dims:
            raise ValueError(f"MLP needs data dimension >= 1 and at least one hidden layer, got {dim}, {hidden_dims}")
        if embedding_dim < 4:
            raise ValueError(f"model.embedding_dim must be >= 4, got {embedding_dim}")
        self.embedding_dim, self.label_scale = embedding_dim, label_scale
        self.act = layers.get_activation(nonlinearity)
        widths = [dim, *hidden_dims]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.label_proj = nn.ModuleList(nn.Linear(embedding_dim, b) for b in hidden_dims)
        self.out = nn.Linear(widths[-1], 2 * dim if learned_variance else dim)  # (prediction, variance)
        self.class_embed = class_embedding(num_classes, embedding_dim)  # None: unconditional, state dict unchanged
        if self.class_embed is not None:
            self.null_class = num_classes

    def forward(self, x: torch.Tensor, labels: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.ndim != 2 or labels.shape != (x.shape[0],):
            raise ValueError(f"MLP expects x [B, d] and labels [B], got {tuple(x.shape)} and {tuple(labels.shape)}")
        emb = layers.timestep_embedding(labels.float() * self.label_scale, self.embedding_dim)
        cemb = embed_class(self.class_embed, y, x.shape[0])
        if cemb is not None:
            emb = emb + cemb  # class embedding added to the noise embedding
        h = x
        for layer, proj in zip(self.hidden, self.label_proj):
            h = self.act(layer(h) + proj(emb))
        return self.out(h)


@register_model("mlp")
class MLP(ConditionalMLP):
    """Reads data.dim (or data.num_channels), model.hidden_dims, model.embedding_dim,
    model.nonlinearity and model.label_scale (see README.md, section Models)."""

    def __init__(self, config, num_classes: Optional[int] = None) -> None:
        m, d = config.model, config.data
        dim = d.get("dim", None) or d.get("num_channels", None)
        if dim is None:
            raise ValueError("the mlp model needs config.data.dim (the data dimension, e.g. 2)")
        super().__init__(dim, tuple(m.get("hidden_dims", (128, 128, 128))), m.get("embedding_dim", 64),
                         m.get("nonlinearity", "swish"), m.get("label_scale", 1.0), num_classes,
                         bool(m.get("learned_variance", False)))
