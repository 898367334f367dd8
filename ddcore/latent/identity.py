"""The identity "autoencoder": DDOQ and D4M in pixel space, behind the same interface as the VAE.

``vae: {source: identity}`` makes the latent stages store the images themselves (mapped to ``[-1, 1]``,
as the VAE input is) and the decoder hand them back, so the same per-class k-means, Voronoi weights and
W2 report run on pixels. It is the reference point that tells how much a latent space adds or costs.

:class:`IdentityAutoencoder` implements the part of ``diffusers.AutoencoderKL`` that ddflow uses
(``config`` with ``in_channels``/``block_out_channels``/``latent_channels``/``scaling_factor``,
``encode(x).latent_dist.mode()/.sample()/.kl()``, ``decode(z).sample``, ``save_pretrained`` and
``from_pretrained`` of a local folder); the folder holds ``config.json`` (``_class_name``
``IdentityAutoencoder``) and a safetensors file with one zero scalar (so the folder format and its
checks are the VAE's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

CLASS_NAME = "IdentityAutoencoder"
WEIGHTS = "diffusion_pytorch_model.safetensors"


class _Config(dict):
    """A dict with attribute access (what ``diffusers``' ``FrozenDict`` config offers)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass(frozen=True)
class _Posterior:
    """A point mass at ``z``: the mode and every sample are ``z``, its KL term is 0."""

    z: torch.Tensor

    def mode(self) -> torch.Tensor:
        return self.z

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.z

    def kl(self) -> torch.Tensor:
        return self.z.new_zeros(self.z.shape[0])


@dataclass(frozen=True)
class _Encoded:
    latent_dist: _Posterior


@dataclass(frozen=True)
class _Decoded:
    sample: torch.Tensor


class IdentityAutoencoder(nn.Module):
    """``encode`` and ``decode`` are the identity on ``[B, C, H, W]`` tensors (downsampling factor 1,
    scaling factor 1, ``channels`` latent channels). ``sample_size`` records the image size."""

    def __init__(self, channels: int, sample_size: int) -> None:
        super().__init__()
        self.config = _Config(_class_name=CLASS_NAME, in_channels=channels, out_channels=channels,
                              latent_channels=channels, block_out_channels=[channels], sample_size=sample_size,
                              scaling_factor=1.0, shift_factor=None)
        self.register_buffer("anchor", torch.zeros(()))  # carries device and dtype; no parameters

    def parameters(self, recurse: bool = True):  # noqa: ANN201 - same signature as nn.Module
        """The anchor buffer stands in for parameters (callers read the device and dtype from the first)."""
        yield self.anchor

    def encode(self, x: torch.Tensor) -> _Encoded:
        return _Encoded(_Posterior(x))

    def decode(self, z: torch.Tensor) -> _Decoded:
        return _Decoded(z)

    def save_pretrained(self, folder: str | Path, safe_serialization: bool = True) -> None:
        """Write ``config.json`` and the one-scalar safetensors file into ``folder``."""
        from safetensors.torch import save_file

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dict(self.config), indent=2, sort_keys=True))
        save_file({"anchor": self.anchor.detach().cpu()}, str(out / WEIGHTS))

    @classmethod
    def from_pretrained(cls, folder: str | Path, **_: Any) -> IdentityAutoencoder:
        """Rebuild from a folder :meth:`save_pretrained` wrote (``config.json``; the weights hold nothing)."""
        conf = json.loads((Path(folder) / "config.json").read_text())
        return cls(int(conf["in_channels"]), int(conf["sample_size"]))


def is_identity_folder(folder: str | Path) -> bool:
    """Whether ``folder/config.json`` names the identity autoencoder (``False`` when absent or unreadable)."""
    try:
        conf = json.loads((Path(folder).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(conf, dict) and conf.get("_class_name") == CLASS_NAME
