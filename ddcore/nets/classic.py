"""Small AlexNet- and VGG-11-style nets for 28–64 px inputs (DC/DM cross-architecture evaluation).

Both treat 28 px inputs as 32 px by padding the first conv more, like ConvNet. ``embed(x)`` is the
flattened output of the last conv stage; ``forward`` is one Linear on top.

- AlexNet-style: conv5×5(128) → pool → conv5×5(192) → pool → conv3×3(256) → conv3×3(192) →
  conv3×3(192) → pool, ReLU after every conv, optional norm. 192·(S/8)² features (3072 at 32 px).
- VGG-11-style: 3×3 convs 64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M with norm + ReLU,
  max-pools. 512·(S/32)² features (512 at 32 px, 2048 at 64 px).
"""

from __future__ import annotations

from torch import nn

from ddcore.errors import ConfigError
from ddcore.nets.convnet import effective_size, norm_layer
from ddcore.nets.head import EmbedClassifier

VGG11_LAYOUT: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
ALEXNET_LAYOUT: tuple[tuple[int, int, bool], ...] = (  # (out channels, kernel, pool after)
    (128, 5, True),
    (192, 5, True),
    (256, 3, False),
    (192, 3, False),
    (192, 3, True),
)


def _check_size(name: str, image_size: int, pools: int) -> int:
    size = effective_size(image_size)
    if size % (1 << pools) != 0:
        raise ConfigError(
            f"{name} needs an image size divisible by {1 << pools} (or 28); got {image_size}, "
            f"use 28, 32 or 64 px inputs"
        )
    return size >> pools


class AlexNetSmall(EmbedClassifier):
    """AlexNet-style net for ``[B, channels, image_size, image_size]`` inputs (28, 32, 64 px).

    Args:
        channels, num_classes, image_size: data shape.
        norm: ``none`` (reference AlexNet), ``instancenorm`` or ``batchnorm`` after every conv.
    """

    def __init__(self, *, channels: int, num_classes: int, image_size: int, norm: str = "none") -> None:
        super().__init__()
        out_size = _check_size("alexnet", image_size, 3)
        layers: list[nn.Module] = []
        in_ch = channels
        for i, (out_ch, k, pool) in enumerate(ALEXNET_LAYOUT):
            pad = k // 2 + (2 if (i == 0 and image_size == 28) else 0)
            conv = nn.Conv2d(in_ch, out_ch, kernel_size=k, padding=pad)
            layers += [conv, norm_layer(norm, out_ch), nn.ReLU()]
            if pool:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self._add_head(channels=channels, image_size=image_size, norm=norm, embed_dim=in_ch * out_size**2,
                       num_classes=num_classes)


class VGG11Small(EmbedClassifier):
    """VGG-11-style net for ``[B, channels, image_size, image_size]`` inputs (28, 32, 64 px).

    Args:
        channels, num_classes, image_size: data shape.
        norm: ``instancenorm`` (reference 'VGG11'), ``batchnorm`` ('VGG11BN') or ``none``.
    """

    def __init__(
        self, *, channels: int, num_classes: int, image_size: int, norm: str = "instancenorm"
    ) -> None:
        super().__init__()
        pools = sum(1 for v in VGG11_LAYOUT if v == "M")
        out_size = _check_size("vgg11", image_size, pools)
        layers: list[nn.Module] = []
        in_ch = channels
        for v in VGG11_LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            assert isinstance(v, int)
            pad = 3 if (not layers and image_size == 28) else 1
            layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=pad), norm_layer(norm, v), nn.ReLU()]
            in_ch = v
        self.features = nn.Sequential(*layers)
        self._add_head(channels=channels, image_size=image_size, norm=norm, embed_dim=in_ch * out_size**2,
                       num_classes=num_classes)
