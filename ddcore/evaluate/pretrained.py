"""A pretrained classifier as the soft-label teacher: a torchvision architecture with weights from a local file.

At ImageNet scale the teacher is not trained here: users bring an ImageNet-pretrained model (torchvision's own
checkpoints, or any state dict for a torchvision architecture). :class:`PretrainedSpec` names the architecture
(a :func:`torchvision.models.get_model` name), the weights file (a state dict read with
``torch.load(weights_only=True)`` or safetensors; nothing is downloaded), the model's input normalisation and
input size. :class:`InputAdapter` maps the dataset's normalised images to what the model expects (undo the
dataset's mean/std, apply the model's, repeat a grey channel, resize), so the student's augmented batches are
relabelled by the teacher online (:class:`ddcore.evaluate.loss.Targets`), one batch at a time, with no stored
per-crop labels.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ddcore.checkpoint import weights_from_bytes
from ddcore.config import StageConfig
from ddcore.errors import WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PretrainedSpec(StageConfig):
    """A pretrained teacher (``soft_labels.teacher.pretrained``).

    Attributes:
        architecture: a torchvision model name (``resnet18``, ``resnet50``, ``mobilenet_v3_large``,
            ``efficientnet_b0``...: ``torchvision.models.list_models()``), built with ``num_classes`` of the data.
        weights: local path of its state dict (``.pth``/``.pt``, read with ``weights_only=True``, or
            ``.safetensors``); a checkpoint dict holding it under ``state_dict`` or ``model`` is accepted.
        input_size: the side the model is fed at (images are resized, bilinear); ``null``: the data's size.
        mean, std: the per-channel normalisation the model was trained with (ImageNet's by default).
    """

    architecture: str
    weights: str
    input_size: int | None = Field(None, ge=8)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


class InputAdapter(nn.Module):
    """``model`` fed with the dataset's normalised images: ``[B, C, H, W]`` (C 1 or 3) -> ``[B, K]`` logits."""

    def __init__(self, model: nn.Module, *, data_mean: tuple[float, ...], data_std: tuple[float, ...],
                 spec: PretrainedSpec) -> None:
        super().__init__()
        self.model, self.size = model, spec.input_size
        view = (1, -1, 1, 1)
        self.register_buffer("data_mean", torch.tensor(data_mean, dtype=torch.float32).view(view), persistent=False)
        self.register_buffer("data_std", torch.tensor(data_std, dtype=torch.float32).view(view), persistent=False)
        self.register_buffer("model_mean", torch.tensor(spec.mean, dtype=torch.float32).view(view), persistent=False)
        self.register_buffer("model_std", torch.tensor(spec.std, dtype=torch.float32).view(view), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pix = x * self.data_std + self.data_mean  # [0, 1] pixels
        if pix.shape[1] == 1:
            pix = pix.expand(-1, 3, -1, -1)
        z = (pix - self.model_mean) / self.model_std
        if self.size is not None and tuple(z.shape[-2:]) != (self.size, self.size):
            z = F.interpolate(z, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.model(z)


def read_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in the local file ``path`` (never unpickles anything but tensors).

    Raises:
        WeightsError: a missing file, or one that holds no state dict (one line with the fix).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsError(f"pretrained teacher weights not found: {p}; set soft_labels.teacher.pretrained.weights "
                           "to a local state-dict file (.pth or .safetensors)")
    try:
        state = weights_from_bytes(p.read_bytes(), safetensors=p.suffix == ".safetensors")
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one line
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise WeightsError(f"pretrained teacher weights {p} cannot be read ({type(exc).__name__}: {first}); pass a "
                           "state dict saved with torch.save(model.state_dict(), path) or safetensors") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"pretrained teacher weights {p} hold no state dict of tensors; save "
                           "model.state_dict() (torchvision format)")
    return {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel checkpoints


def build_pretrained(spec: PretrainedSpec, num_classes: int, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The torchvision ``spec.architecture`` with ``num_classes`` outputs and the weights of ``spec.weights`` (or
    ``state``), in eval mode.

    Raises:
        WeightsError: an unknown architecture, or weights whose keys or shapes do not fit it (one line naming the
            first mismatches and the fix).
    """
    import torchvision

    if spec.architecture not in torchvision.models.list_models():
        raise WeightsError(f"unknown torchvision architecture {spec.architecture!r} for the pretrained teacher; "
                           "use a name from torchvision.models.list_models() (e.g. resnet18, efficientnet_b0)")
    model = torchvision.models.get_model(spec.architecture, weights=None, num_classes=num_classes)
    state = read_state_file(spec.weights) if state is None else state
    want = model.state_dict()
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or unexpected:
        raise WeightsError(f"pretrained teacher weights {spec.weights} do not fit {spec.architecture}: "
                           f"{len(missing)} missing keys (first {missing[:2]}), {len(unexpected)} unexpected "
                           f"(first {unexpected[:2]}); pass weights of that architecture")
    bad = [k for k in want if tuple(want[k].shape) != tuple(state[k].shape)]
    if bad:
        raise WeightsError(f"pretrained teacher weights {spec.weights}: {bad[0]} is {tuple(state[bad[0]].shape)}, "
                           f"{spec.architecture} with {num_classes} classes needs {tuple(want[bad[0]].shape)}; the "
                           "teacher's classes must be the dataset's (same number, same order)")
    model.load_state_dict(state)
    return model.eval()
