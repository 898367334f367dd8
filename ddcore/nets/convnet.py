"""ConvNet-D, the matching and evaluation network of the DC/DSA/DM line of work (docs/methods.md §1.1).

Each of the ``depth`` blocks is Conv 3×3 (``width`` channels) → norm → ReLU → AvgPool 2×2. For 28 px
inputs the first conv pads by 3, so the features are those of a 32 px input. ``embed(x)`` is the
flattened output of the last block (2048-d for 32 px at depth 3); ``forward`` is one Linear on top.
"""

from __future__ import annotations

from torch import nn

from ddcore.errors import ConfigError
from ddcore.nets.head import EmbedClassifier

NORMS = ("instancenorm", "batchnorm", "none")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """The normalisation layer ``kind`` for ``channels`` feature maps.

    ``instancenorm`` is ``GroupNorm(channels, channels, affine=True)`` (per-sample, per-channel, with a
    learned scale and shift, as in the reference ConvNet); ``batchnorm`` is ``BatchNorm2d``; ``none`` is
    the identity.
    """
    if kind == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"unknown norm '{kind}'; use one of: {', '.join(NORMS)}")


def effective_size(image_size: int) -> int:
    """Spatial size the first block sees: 28 px inputs are padded to act as 32 px, others unchanged."""
    return 32 if image_size == 28 else image_size


class ConvNet(EmbedClassifier):
    """ConvNet-D for ``[B, channels, image_size, image_size]`` float32 inputs.

    Args:
        channels: input channels (1 or 3).
        num_classes: classifier outputs.
        image_size: input height = width (28, 32, 64, 128, ...).
        width: feature maps per block (reference: 128).
        depth: number of conv blocks (reference: 3 at 32 px, 4 at 64 px, 5 at 128 px).
        norm: ``instancenorm`` (reference), ``batchnorm`` or ``none``.
    """

    def __init__(
        self,
        *,
        channels: int,
        num_classes: int,
        image_size: int,
        width: int = 128,
        depth: int = 3,
        norm: str = "instancenorm",
    ) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ConfigError(f"ConvNet needs depth >= 1 and width >= 1 (got depth={depth}, width={width})")
        size = effective_size(image_size)
        if size >> depth < 1:
            raise ConfigError(
                f"ConvNet depth {depth} pools a {image_size} px image below 1 px; use depth <= "
                f"{max(1, size.bit_length() - 1)}"
            )
        layers: list[nn.Module] = []
        in_ch = channels
        for d in range(depth):
            pad = 3 if (d == 0 and image_size == 28) else 1
            layers += [
                nn.Conv2d(in_ch, width, kernel_size=3, padding=pad),
                norm_layer(norm, width),
                nn.ReLU(),
                nn.AvgPool2d(kernel_size=2, stride=2),
            ]
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.depth = depth
        self.width = width
        self._add_head(channels=channels, image_size=image_size, norm=norm, embed_dim=width * (size >> depth) ** 2,
                       num_classes=num_classes)
