"""The network a config names, typed once: :class:`NetworkSpec` and the :class:`NamesNetwork` validator.

Every stage config that trains or samples a network (distillation, baselines, pruning, evaluation, the
teacher) has the same three keys, ``network``, ``width`` and ``depth``, validated by one mixin. The keys
stay flat in each config (so YAML files, dumps and digests are unchanged); ``config.network_spec``
gives them as one value that builds the network.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, field_validator, model_validator
from torch import nn

from ddcore.nets.registry import build_network, depth_problem, name_problem


@dataclass(frozen=True)
class NetworkSpec:
    """A network by name: ``width`` is ConvNet's channel count, ``depth`` its block count (``None``: the
    name's depth, 3 for ``convnet``); other architectures have fixed widths and take no depth."""

    name: str = "convnet"
    width: int = 128
    depth: int | None = None

    def build(self, *, channels: int, num_classes: int, image_size: int, seed: int) -> nn.Module:
        """A freshly initialised network with weights determined by ``seed`` (see :func:`build_network`)."""
        return build_network(self.name, channels=channels, num_classes=num_classes, image_size=image_size,
                             seed=seed, width=self.width, depth=self.depth)


class NamesNetwork(BaseModel):
    """Mixin of configs declaring ``network: str``, ``width: int`` and ``depth: int | None``: one validator
    (known name; a depth that fits it) and the :class:`NetworkSpec` they form."""

    @field_validator("network", check_fields=False)
    @classmethod
    def _known_network(cls, name: str) -> str:
        problem = name_problem(name)
        if problem is not None:
            raise ValueError(problem)
        return name

    @model_validator(mode="after")
    def _depth_fits_network(self) -> NamesNetwork:
        problem = depth_problem(self.network, self.depth)  # type: ignore[attr-defined]
        if problem is not None:
            raise ValueError(problem)
        return self

    @property
    def network_spec(self) -> NetworkSpec:
        """``network``, ``width`` and ``depth`` as one :class:`NetworkSpec`."""
        return NetworkSpec(self.network, self.width, self.depth)  # type: ignore[attr-defined]
