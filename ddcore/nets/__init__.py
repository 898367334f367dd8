"""Networks used to distil and to evaluate: ConvNet-D, ResNet-18 (BN/IN), AlexNet, VGG-11.

Every network is an :class:`EmbedClassifier`: ``embed(x) -> [B, D]`` and ``forward(x) = classifier(embed(x))``.
Build them with :func:`build_network` (seeded, deterministic) and refresh them with :func:`reinit_`.
"""

from ddcore.nets.classic import AlexNetSmall, VGG11Small
from ddcore.nets.convnet import ConvNet, norm_layer
from ddcore.nets.head import EmbedClassifier
from ddcore.nets.registry import NETWORK_NAMES, build_network, embed_dim, reinit_
from ddcore.nets.resnet import ResNet18

__all__ = [
    "NETWORK_NAMES",
    "AlexNetSmall",
    "ConvNet",
    "EmbedClassifier",
    "ResNet18",
    "VGG11Small",
    "build_network",
    "embed_dim",
    "norm_layer",
    "reinit_",
]
