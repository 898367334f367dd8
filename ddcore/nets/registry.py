"""Build networks by name, deterministically from a seed, and re-initialise them in place.

Names (case-insensitive):

- ``convnet`` (depth from the argument, default 3), ``convnet-3``, ``convnet-4``, ``convnet-5``:
  ConvNet-D with instance norm; ``convnet-bn``: batch norm; ``convnet-nonorm``: no norm.
- ``resnet18`` (= ``resnet18-in``, the reference 'ResNet18' uses instance norm), ``resnet18-bn``.
- ``alexnet`` (no norm), ``alexnet-bn``, ``vgg11`` (instance norm), ``vgg11-bn``.

``width`` is ConvNet's channel count; the other architectures have the fixed widths of their reference
definitions. Initialisation follows PyTorch's defaults (conv/linear weights and biases
U(-1/√fan_in, 1/√fan_in), norms scale 1 shift 0) but draws from a ``torch.Generator`` seeded with
``seed``, so the same seed gives the same weights on any device and the global RNG is never touched.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ddcore.errors import ConfigError
from ddcore.nets.classic import AlexNetSmall, VGG11Small
from ddcore.nets.convnet import ConvNet
from ddcore.nets.resnet import ResNet18

_SPECS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "convnet": (ConvNet, {"norm": "instancenorm"}),
    "convnet-3": (ConvNet, {"norm": "instancenorm", "depth": 3}),
    "convnet-4": (ConvNet, {"norm": "instancenorm", "depth": 4}),
    "convnet-5": (ConvNet, {"norm": "instancenorm", "depth": 5}),
    "convnet-bn": (ConvNet, {"norm": "batchnorm"}),
    "convnet-nonorm": (ConvNet, {"norm": "none"}),
    "resnet18": (ResNet18, {"norm": "instancenorm"}),
    "resnet18-in": (ResNet18, {"norm": "instancenorm"}),
    "resnet18-bn": (ResNet18, {"norm": "batchnorm"}),
    "alexnet": (AlexNetSmall, {"norm": "none"}),
    "alexnet-bn": (AlexNetSmall, {"norm": "batchnorm"}),
    "vgg11": (VGG11Small, {"norm": "instancenorm"}),
    "vgg11-bn": (VGG11Small, {"norm": "batchnorm"}),
}

NETWORK_NAMES: tuple[str, ...] = tuple(_SPECS)
DEFAULT_CONVNET_DEPTH = 3


def name_problem(name: str) -> str | None:
    """Why :func:`build_network` cannot build ``name`` (one line with the fix), or ``None``."""
    if name.strip().lower() not in NETWORK_NAMES:
        return f"unknown network '{name}'; valid names: {', '.join(NETWORK_NAMES)}"
    return None


def depth_problem(name: str, depth: int | None) -> str | None:
    """Why ``depth`` does not fit the known network ``name`` (one line with the fix), or ``None``."""
    cls, fixed = _SPECS[name.strip().lower()]
    if depth is None:
        return None
    if cls is not ConvNet:
        return f"depth applies to ConvNet only; drop depth={depth} for network '{name}'"
    if "depth" in fixed and depth != fixed["depth"]:
        return (f"network '{name}' has depth {fixed['depth']} but depth={depth} was given; "
                f"use 'convnet' with depth={depth}")
    return None


def uses_batch_norm(name: str) -> bool:
    """Whether network ``name`` normalises over the batch (its features then depend on the batch)."""
    spec = _SPECS.get(name.strip().lower())
    return spec is not None and spec[1].get("norm") == "batchnorm"


def build_network(
    name: str,
    *,
    channels: int,
    num_classes: int,
    image_size: int,
    seed: int,
    width: int = 128,
    depth: int | None = None,
) -> nn.Module:
    """A freshly initialised network ``name`` with weights determined by ``seed`` alone.

    Args:
        name: one of :data:`NETWORK_NAMES`.
        channels, num_classes, image_size: data shape (square images).
        seed: integer seed of the initial weights (see :func:`reinit_`).
        width: ConvNet width (reference 128); ignored by other architectures.
        depth: ConvNet depth; ``None`` means the name's depth, or 3 for ``convnet``/``convnet-bn``.

    Returns:
        An ``nn.Module`` on the CPU in training mode with ``embed(x) -> [B, D]`` and ``embed_dim``.

    Raises:
        ConfigError: unknown name, or a depth that contradicts the name or is given to a non-ConvNet.
    """
    problem = name_problem(name) or depth_problem(name, depth)
    if problem is not None:
        raise ConfigError(problem)
    cls, fixed = _SPECS[name.strip().lower()]
    kwargs: dict[str, Any] = dict(fixed)
    if cls is ConvNet:
        kwargs.setdefault("depth", depth if depth is not None else DEFAULT_CONVNET_DEPTH)
        kwargs["width"] = width
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = cls(channels=channels, num_classes=num_classes, image_size=image_size, **kwargs)
    reinit_(net, seed)
    return net


@torch.no_grad()
def reinit_(net: nn.Module, seed: int) -> nn.Module:
    """Re-draw every parameter of ``net`` in place from ``seed``; returns ``net``.

    Conv and Linear weights and biases get U(-b, b) with b = 1/√fan_in (PyTorch's default
    distribution), norm layers get scale 1, shift 0 and fresh running statistics. Values are drawn on
    the CPU from ``torch.Generator().manual_seed(seed)`` in module order and copied to the parameters'
    device, so ``reinit_(net, s)`` gives exactly the weights of ``build_network(..., seed=s)``, on any
    device, without touching the global RNG. Cheap enough to call every DM iteration.
    """
    gen = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            fan_in = module.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            _uniform_(module.weight, bound, gen)
            if module.bias is not None:
                _uniform_(module.bias, bound, gen)
        elif isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm):
            if getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.fill_(0.0)
            if isinstance(module, nn.modules.batchnorm._NormBase):
                module.reset_running_stats()
        elif any(True for _ in module.parameters(recurse=False)):
            raise TypeError(f"reinit_ does not know how to initialise {type(module).__name__}")
    return net


def _uniform_(param: torch.Tensor, bound: float, gen: torch.Generator) -> None:
    values = torch.empty(param.shape, dtype=torch.float32).uniform_(-bound, bound, generator=gen)
    param.copy_(values, non_blocking=True)  # pageable host -> device: staged, no device wait


def embed_dim(net: nn.Module, channels: int, image_size: int) -> int:
    """Length D of ``net.embed(x)`` for ``[B, channels, image_size, image_size]`` inputs.

    Uses the net's recorded ``embed_dim`` when it was built for this shape; otherwise runs one zero
    image through ``embed`` in eval mode (no side effects on running statistics).
    """
    if getattr(net, "image_size", None) == image_size and getattr(net, "channels", None) == channels:
        dim = getattr(net, "embed_dim", None)
        if isinstance(dim, int):
            return dim
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            probe = torch.zeros(1, channels, image_size, image_size, device=device)
            out = net.embed(probe)  # type: ignore[operator]
    finally:
        net.train(was_training)
    return int(out.shape[1])
