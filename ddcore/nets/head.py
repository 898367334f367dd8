"""What every network here shares: features ``embed(x) -> [B, embed_dim]`` and one Linear on top of them."""

from __future__ import annotations

import torch
from torch import nn


class EmbedClassifier(nn.Module):
    """Base of ConvNet, AlexNet, VGG-11 and ResNet-18: ``forward(x) = classifier(embed(x))``.

    ``embed`` defaults to the flattened output of ``self.features`` (ResNet-18 overrides it). A subclass builds
    its layers, then calls :meth:`_add_head` last, so the seeded initialisation of the layers before the
    classifier is what it would be without this base.
    """

    channels: int
    image_size: int
    norm: str
    embed_dim: int

    def _add_head(self, *, channels: int, image_size: int, norm: str, embed_dim: int, num_classes: int) -> None:
        self.channels = channels
        self.image_size = image_size
        self.norm = norm
        self.embed_dim = embed_dim
        self.classifier = nn.Linear(embed_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features: float32 ``[B, C, H, W]`` → ``[B, embed_dim]`` (here the flattened ``features`` output)."""
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]``."""
        return self.classifier(self.embed(x))
