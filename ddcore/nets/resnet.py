"""ResNet-18 for small images (CIFAR-style stem), in batch-norm and instance-norm variants.

For inputs up to 64 px the stem is one 3×3 conv with stride 1 and no max-pool (the CIFAR variant used
for cross-architecture evaluation in DC/DSA/DM); larger inputs get the ImageNet stem (7×7 stride 2 +
max-pool). The embedding is the global-average-pooled output of the last stage: 512-d at any size.
"""

from __future__ import annotations

import torch
from torch import nn

from ddcore.nets.convnet import norm_layer
from ddcore.nets.head import EmbedClassifier

STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))
BLOCKS_PER_STAGE = 2


class BasicBlock(nn.Module):
    """Two 3×3 convs with a residual connection (1×1 conv projection when the shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)
        self.norm1 = norm_layer(norm, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=False)
        self.norm2 = norm_layer(norm, out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                norm_layer(norm, out_ch),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(EmbedClassifier):
    """ResNet-18 for ``[B, channels, image_size, image_size]`` float32 inputs.

    Args:
        channels: input channels.
        num_classes: classifier outputs.
        image_size: input height = width; <= 64 uses the CIFAR stem, larger the ImageNet stem.
        norm: ``batchnorm`` (ResNet-18-BN) or ``instancenorm`` (ResNet-18-IN, GroupNorm(C, C)).
    """

    def __init__(self, *, channels: int, num_classes: int, image_size: int, norm: str = "batchnorm") -> None:
        super().__init__()
        if image_size <= 64:
            self.stem = nn.Sequential(
                nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False),
                norm_layer(norm, 64),
                nn.ReLU(),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False),
                norm_layer(norm, 64),
                nn.ReLU(),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            )
        blocks: list[nn.Module] = []
        in_ch = 64
        for out_ch, stride in STAGES:
            for b in range(BLOCKS_PER_STAGE):
                blocks.append(BasicBlock(in_ch, out_ch, stride if b == 0 else 1, norm))
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self._add_head(channels=channels, image_size=image_size, norm=norm, embed_dim=in_ch, num_classes=num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled last-stage features: ``[B, C, H, W]`` → ``[B, 512]``."""
        return self.pool(self.blocks(self.stem(x))).flatten(1)
