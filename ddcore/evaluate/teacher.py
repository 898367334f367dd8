"""The soft-label teacher: a network trained on the REAL training split, saved and loaded as a folder.

The soft-label protocol (docs/methods.md §5.4, D4M/DDOQ) trains each student against ``softmax(teacher(x)/T)``
on every augmented batch; :func:`ddcore.evaluate.train.train_and_evaluate` takes that network as
``teacher=``. This module trains it with the same loop (:func:`ddcore.evaluate.train.train_network`)
under a :class:`TeacherConfig`, and stores it as a folder::

    <dir>/teacher.json          format, config, num_classes, image_shape, test_acc, seed, weights digest
    <dir>/weights.safetensors   the state dict (``weights.pt`` via ``torch.save`` when safetensors is absent)

:func:`load_teacher` rebuilds the network from ``teacher.json`` through
:func:`ddcore.nets.registry.build_network` and refuses a missing, incomplete or altered folder with one
:class:`TeacherError` line. Nothing here reads the clock: the same config, data and seed on the CPU give
the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ddcore.augment.dsa import DEFAULT_STRATEGY
from ddcore.checkpoint import weights_from_bytes
from ddcore.config import StageConfig
from ddcore.data import storage as fsio
from ddcore.distill.pool import all_real
from ddcore.errors import DataError, WeightsError
from ddcore.evaluate.pretrained import InputAdapter, PretrainedSpec, build_pretrained
from ddcore.evaluate.protocol import EvalConfig
from ddcore.evaluate.train import EpochCheckpoint, Progress, train_network
from ddcore.nets.spec import NamesNetwork
from ddcore.sampling import RealSampler
from ddcore.threads import CpuThreads

TEACHER_FILE = "teacher.json"
SAFETENSORS_FILE = "weights.safetensors"
TORCH_FILE = "weights.pt"
TEACHER_FORMAT = "ddflow-teacher"
TEACHER_FORMAT_VERSION = 1


class TeacherError(WeightsError):
    """A teacher folder is missing, incomplete, corrupt or does not fit the data it is used on."""


class TeacherConfig(StageConfig, NamesNetwork, CpuThreads):
    """How the soft-label teacher is trained on the real training split (defaults: a ConvNet-3 teacher).

    Fields:
        network: a name from :data:`ddcore.nets.NETWORK_NAMES`; ``width``/``depth`` as for ConvNet
            (``depth=None``: the name's depth, 3 for ``convnet``).
        width, depth: the network's width (channels) and depth.
        epochs: passes over the training split.
        lr, momentum, weight_decay: SGD hyper-parameters.
        batch_size: images per step.
        lr_schedule: ``cosine`` (per epoch, from ``lr`` towards 0), ``multistep`` (×``lr_decay`` at
            20/40/60/80 % of the epochs) or ``constant``.
        lr_decay: the ``multistep`` factor.
        dsa: per-sample DSA augmentation (``dsa_strategy``) on every batch; off: no augmentation.
        dsa_strategy: the DSA families, ``_``-separated (e.g. ``color_crop_cutout_flip_scale_rotate``).
        seed: network initialisation; shuffling and augmentation use sub-seeds derived from it.
        pretrained: use this pretrained torchvision classifier (:mod:`ddcore.evaluate.pretrained`) instead of
            training one; the training fields above are then unused.
    """

    network: str = "convnet"
    width: int = Field(default=128, ge=1)
    depth: int | None = Field(default=None, ge=1)
    epochs: int = Field(default=50, ge=1)
    lr: float = Field(default=0.01, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0)
    batch_size: int = Field(default=256, ge=1)
    lr_schedule: Literal["cosine", "multistep", "constant"] = "cosine"
    lr_decay: float = Field(default=0.1, gt=0, le=1)
    dsa: bool = True
    dsa_strategy: str = DEFAULT_STRATEGY
    seed: int = Field(default=0, ge=0)
    pretrained: PretrainedSpec | None = None

    @model_validator(mode="after")
    def _check(self) -> TeacherConfig:
        self.to_eval_config()  # validates the DSA strategy the same way the evaluator does
        return self

    def to_eval_config(self) -> EvalConfig:
        """The evaluator recipe that trains this teacher (one run, ``epochs`` passes, last epoch)."""
        return EvalConfig.model_validate(dict(
            protocol="dm", network=self.network, width=self.width, depth=self.depth, epochs=self.epochs,
            dc_extra_pass=False, optimizer="sgd", lr=self.lr, momentum=self.momentum,
            weight_decay=self.weight_decay, batch_size=self.batch_size, lr_schedule=self.lr_schedule,
            lr_decay=self.lr_decay, augmentation="dsa" if self.dsa else "none", dsa_strategy=self.dsa_strategy,
            cutmix=False, num_eval=1, seed=self.seed, test_every=0, selection="last",
        ))


def train_teacher(
    train: RealSampler | tuple[torch.Tensor, torch.Tensor],
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    config: TeacherConfig,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    checkpoint: EpochCheckpoint | None = None,
) -> tuple[nn.Module, dict[str, float | int]]:
    """Train the teacher on the real training data and test it (resumable through ``checkpoint``).

    Args:
        train: a :class:`~ddcore.sampling.RealSampler` over the real train split, or ``(images, labels)``:
            float32 ``[N, C, S, S]`` normalised images and int64 ``[N]`` labels.
        test_images, test_labels: float32 ``[M, C, S, S]`` (may stay on the CPU) and int64 ``[M]``.
        config: the recipe; every random draw comes from ``config.seed``.
        num_classes: classifier size; taken from the sampler when ``train`` is one, required otherwise.
        device: where to train. progress: ``(pass, passes, mean loss)`` after every epoch.

    Returns:
        ``(net, metrics)``: the trained network on ``device`` in eval mode with gradients off, and
        ``{"test_acc": fraction in [0, 1], "train_loss": last epoch's mean loss, "epochs", "num_train",
        "num_classes", "seed", "seconds"}``.

    Raises:
        DataError: the tensors do not fit together, or ``num_classes`` is missing for tensors.
    """
    if isinstance(train, tuple):
        images, labels = train
        if num_classes is None:
            raise DataError("train_teacher needs num_classes when given tensors; pass the dataset's num_classes")
    else:
        images, labels = all_real(train)
        num_classes = train.num_classes if num_classes is None else num_classes
    net, run = train_network(images, labels, test_images, test_labels, config=config.to_eval_config(),
                             seed=config.seed, num_classes=num_classes, device=device, progress=progress,
                             checkpoint=checkpoint)
    net.eval().requires_grad_(False)
    metrics: dict[str, float | int] = {
        "test_acc": run.acc, "train_loss": run.losses[-1], "epochs": config.epochs, "num_train": run.num_train,
        "num_classes": num_classes, "seed": config.seed, "seconds": run.seconds,
    }
    return net, metrics


def _safetensors() -> Any:
    """``safetensors.torch`` when installed, else ``None`` (weights then go through ``torch.save``)."""
    try:
        import safetensors.torch as st
    except ImportError:
        return None
    return st


def save_teacher(
    net: nn.Module,
    config: TeacherConfig,
    out_dir: str,
    *,
    num_classes: int,
    image_shape: tuple[int, int, int],
    test_acc: float | None = None,
    dataset_digest: str | None = None,
    data_norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> str:
    """Write ``net`` as a teacher folder at ``out_dir`` (local path or fsspec URL); returns ``out_dir``.

    The weights go to ``weights.safetensors`` (or ``weights.pt``, a plain state dict, when safetensors is
    not installed), then ``teacher.json`` records the format, ``config``, ``num_classes``, ``image_shape``
    ``[C, H, W]``, ``test_acc`` (fraction), ``seed``, the training data's digest and the weights' sha256.
    The folder is complete once ``teacher.json`` exists; a stage's ``out`` is published atomically by
    the stage machinery. No timestamps: equal weights give equal bytes. A pretrained teacher (an
    :class:`~ddcore.evaluate.pretrained.InputAdapter`) also records ``data_norm``, the dataset's ``(mean, std)``
    its adapter undoes.
    """
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    st = _safetensors()
    if st is not None:
        name, payload = SAFETENSORS_FILE, st.save(state)
    else:
        buf = io.BytesIO()
        torch.save(state, buf)
        name, payload = TORCH_FILE, buf.getvalue()
    fs, path = fsio.get_fs(out_dir)
    fs.makedirs(path, exist_ok=True)
    with fsio.open_write(fs, fsio.join(path, name)) as f:
        f.write(payload)
    doc = {
        "format": TEACHER_FORMAT, "format_version": TEACHER_FORMAT_VERSION, "config": config.model_dump(mode="json"),
        "num_classes": int(num_classes), "image_shape": [int(d) for d in image_shape],
        "test_acc": None if test_acc is None else float(test_acc), "seed": config.seed,
        "dataset_digest": dataset_digest, "weights_file": name,
        "weights_sha256": hashlib.sha256(payload).hexdigest(),
        **({"data_norm": [list(data_norm[0]), list(data_norm[1])]} if data_norm is not None else {}),
    }
    with fsio.open_write(fs, fsio.join(path, TEACHER_FILE)) as f:
        f.write(json.dumps(doc, indent=2, sort_keys=True).encode())
    return out_dir


def read_teacher_info(uri: str) -> dict[str, Any]:
    """The parsed ``teacher.json`` of the folder ``uri`` (checked for format and required keys).

    Raises:
        TeacherError: the folder or its ``teacher.json`` is missing or unreadable.
    """
    fs, path = fsio.get_fs(uri)
    info_path = fsio.join(path, TEACHER_FILE)
    if not fs.exists(info_path):
        what = "has no teacher.json (incomplete)" if fs.exists(path) else "does not exist"
        raise TeacherError(f"teacher folder {uri} {what}; run the train_teacher stage and pass its output folder")
    try:
        doc = json.loads(fs.cat_file(info_path))
        ok = isinstance(doc, Mapping) and doc.get("format") == TEACHER_FORMAT and _well_formed(doc)
    except (ValueError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise TeacherError(f"teacher folder {uri}: teacher.json is corrupt or not a ddflow teacher; "
                           "delete the folder and re-run the train_teacher stage")
    if doc.get("format_version") != TEACHER_FORMAT_VERSION:
        raise TeacherError(f"teacher folder {uri} has format version {doc.get('format_version')!r}, this ddflow "
                           f"reads {TEACHER_FORMAT_VERSION}; re-run the train_teacher stage")
    return dict(doc)


def _well_formed(doc: Mapping[str, Any]) -> bool:
    """Required keys present with sane types; the weights file is one of the two known names (no paths)."""
    shape, k = doc.get("image_shape"), doc.get("num_classes")
    return (isinstance(doc.get("config"), Mapping) and isinstance(k, int) and k > 0
            and isinstance(shape, list) and len(shape) == 3 and all(isinstance(d, int) and d > 0 for d in shape)
            and doc.get("weights_file") in (SAFETENSORS_FILE, TORCH_FILE)
            and isinstance(doc.get("weights_sha256"), str))


def load_teacher(
    uri: str,
    device: str | torch.device = "cpu",
    *,
    num_classes: int | None = None,
    image_shape: tuple[int, int, int] | None = None,
) -> nn.Module:
    """The teacher saved at ``uri``, on ``device``, in eval mode with gradients off.

    Args:
        uri: a folder written by :func:`save_teacher` (e.g. the ``train_teacher`` stage's ``ref.uri``).
        device: where to put it.
        num_classes, image_shape: when given, what the data it will label looks like (``[C, H, W]``);
            a teacher of another shape is refused.

    Returns:
        The network; ``net(x)`` maps float32 ``[B, C, H, W]`` normalised images to ``[B, num_classes]`` logits.

    Raises:
        TeacherError: the folder is missing, incomplete or altered, or does not fit ``num_classes``/``image_shape``.
    """
    doc = read_teacher_info(uri)
    fs, path = fsio.get_fs(uri)
    shape = tuple(int(d) for d in doc["image_shape"])
    if num_classes is not None and int(doc["num_classes"]) != num_classes:
        raise TeacherError(f"teacher {uri} has {doc['num_classes']} classes but the data has {num_classes}; "
                           "train a teacher on this dataset")
    if image_shape is not None and shape != tuple(image_shape):
        raise TeacherError(f"teacher {uri} takes images {list(shape)} but the data is {list(image_shape)}; "
                           "train a teacher on this dataset")
    weights_path = fsio.join(path, str(doc["weights_file"]))
    try:
        payload = fs.cat_file(weights_path)
    except FileNotFoundError:
        raise TeacherError(f"teacher folder {uri} has no {doc['weights_file']} (incomplete); delete the folder "
                           "and re-run the train_teacher stage") from None
    if hashlib.sha256(payload).hexdigest() != doc["weights_sha256"]:
        raise TeacherError(f"teacher weights {weights_path} are truncated or altered (sha256 mismatch); delete "
                           "the folder and re-run the train_teacher stage")
    try:
        cfg = TeacherConfig.model_validate(doc["config"])
        state = _read_state(payload, str(doc["weights_file"]))
        if cfg.pretrained is not None:
            mean, std = doc["data_norm"]
            inner = {k.removeprefix("model."): v for k, v in state.items()}
            net = InputAdapter(build_pretrained(cfg.pretrained, int(doc["num_classes"]), state=inner),
                               data_mean=tuple(mean), data_std=tuple(std), spec=cfg.pretrained)
        else:
            net = cfg.network_spec.build(channels=shape[0], num_classes=int(doc["num_classes"]),
                                         image_size=shape[1], seed=cfg.seed)
            net.load_state_dict(state)
    except TeacherError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything that stops the rebuild is one user-facing line
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise TeacherError(f"teacher folder {uri} cannot be rebuilt ({type(exc).__name__}: {first}); delete the "
                           "folder and re-run the train_teacher stage") from None
    return net.to(device).eval().requires_grad_(False)


def _read_state(payload: bytes, name: str) -> dict[str, torch.Tensor]:
    if name not in (SAFETENSORS_FILE, TORCH_FILE):
        raise TypeError(f"unknown weights file {name!r}")
    if name == SAFETENSORS_FILE and _safetensors() is None:
        raise TeacherError(f"teacher weights are {SAFETENSORS_FILE} but safetensors is not installed; "
                           "pip install safetensors")
    state = weights_from_bytes(payload, safetensors=name == SAFETENSORS_FILE)
    if not isinstance(state, dict):
        raise TypeError(f"{name} holds a {type(state).__name__}, not a state dict")
    return state
