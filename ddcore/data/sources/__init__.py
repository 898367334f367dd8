"""Ingest sources and their typed configs (one discriminated union keyed by ``kind``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ddcore.config import StageConfig
from ddcore.data.sources.arrays import cifar_source, npz_source
from ddcore.data.sources.artifact import ArtifactSpec
from ddcore.data.sources.base import Sample, Source
from ddcore.data.sources.folder import ImageFolderSource
from ddcore.data.sources.hf import HFDiskSource, HFDiskSpec
from ddcore.data.sources.idx import FASHION_MNIST_CLASSES, FashionMNISTSource
from ddcore.data.sources.shards import ShardSource
from ddcore.data.sources.tensors import PtSource, PtSpec


class FashionMNISTSpec(StageConfig):
    """Fashion-MNIST (or MNIST-format) IDX files: 60k train / 10k test, 28x28x1, 10 named classes.

    Attributes:
        kind: ``fashion_mnist``.
        root: folder with the four IDX files (``.gz`` or plain); ``null``: ``$DDFLOW_FASHION_MNIST``, the Debian
            package's ``/usr/share/datasets/fashion-mnist``, then ``~/.cache/ddflow``.
        name: dataset name recorded in the artifact.
    """

    kind: Literal["fashion_mnist"] = "fashion_mnist"
    root: str | None = None
    name: str = "fashion-mnist"


class ImageFolderSpec(StageConfig):
    """torchvision-style ImageFolder: ``root/<class>/*.png`` (any PIL format), or ``root/train/<class>/...`` plus
    ``root/test/<class>/...`` (or ``val``); classes are the sorted folder names.

    Attributes:
        kind: ``image_folder``.
        root: the dataset folder.
        name: dataset name; ``null``: the folder's name.
        test_fraction: without ``train``/``test`` sub-folders, hold out this fraction of each class as the test
            split (0: train split only).
        split_seed: seed of that stratified hold-out.
        channels: 1 or 3; ``null``: from the first image (greyscale: 1, else 3).
        resize: ``[H, W]`` every image is resized to (bilinear); ``null``: all images must share one size.
        allow_16bit: convert images of more than 8 bits per sample (16-bit PNG, 32-bit TIFF) to 8 bits, clipping
            values above 255; ``false``: such images are refused.
        keep_jpeg: keep a JPEG file's bytes as they are when it needs no conversion or resize (no re-encode, no
            generation loss; the artifact's storage is then ``jpg``); ``false``: every image becomes a PNG.
    """

    kind: Literal["image_folder"] = "image_folder"
    root: str
    name: str | None = None
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    split_seed: int = 0
    channels: Literal[1, 3] | None = None
    resize: tuple[int, int] | None = None
    allow_16bit: bool = False
    keep_jpeg: bool = True


class CifarSpec(StageConfig):
    """CIFAR-10 (``data_batch_1..5``, ``test_batch``) or CIFAR-100 (``train``, ``test``) python batches, read with
    a restricted unpickler that only rebuilds numpy arrays.

    Attributes:
        kind: ``cifar``.
        root: the extracted ``cifar-10-batches-py`` / ``cifar-100-python`` folder.
        name: dataset name; ``null``: ``cifar10`` or ``cifar100``.
    """

    kind: Literal["cifar"] = "cifar"
    root: str
    name: str | None = None


class NpzSpec(StageConfig):
    """A NumPy ``.npz`` with arrays ``x`` (``[N, H, W]``, ``[N, H, W, C]`` or ``[N, C, H, W]``; uint8 or floats in
    [0, 1]) and ``y`` (class indices), optionally ``x_test``/``y_test``; read with ``allow_pickle=False``.

    Attributes:
        kind: ``npz``.
        path: the ``.npz`` file.
        name: dataset name; ``null``: the file name without ``.npz``.
        test_fraction: without ``x_test``/``y_test``, hold out this fraction of each class as the test split.
        split_seed: seed of that stratified hold-out.
        classes: class names (index = label); ``null``: ``"0"`` .. ``"K-1"``.
    """

    kind: Literal["npz"] = "npz"
    path: str
    name: str | None = None
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    split_seed: int = 0
    classes: list[str] | None = None


class WebDatasetSpec(StageConfig):
    """Existing WebDataset tar shards: one image field (``png``, ``jpg``, ...) and an integer ``cls`` per sample;
    pickle-like members are refused, ``pipe:`` URLs need ``DDFLOW_ALLOW_PIPE=1``.

    Attributes:
        kind: ``webdataset``.
        urls: ``{split: url}``; a url is a path, an fsspec URL or a brace pattern (``shards-{0000..0009}.tar``).
        name: dataset name.
        classes: class names (index = label); ``null``: ``"0"`` .. ``"K-1"`` from the largest label seen.
        layout: ``reencode`` decodes every image and writes ddflow's own PNG shards (any image size mix is refused,
            keys are renumbered where they are not flat names); ``in_place`` indexes the shards where they are
            (byte offsets and per-sample sha256 in the manifest, no copy, no re-encode: the artifact holds only
            its manifest); ``copy`` indexes them the same way and copies the shard files byte for byte into the
            artifact (same digest as ``in_place``). ``in_place``/``copy`` need one image format and size.
    """

    kind: Literal["webdataset"] = "webdataset"
    urls: dict[str, str]
    name: str = "webdataset"
    classes: list[str] | None = None
    layout: Literal["reencode", "in_place", "copy"] = "reencode"


SourceSpec = Annotated[
    FashionMNISTSpec | ImageFolderSpec | CifarSpec | NpzSpec | WebDatasetSpec | ArtifactSpec | PtSpec | HFDiskSpec,
    Field(discriminator="kind"),
]


def build_source(spec: StageConfig, *, workers: int = 1) -> Source:
    """Instantiate the reader for a source spec (``workers``: decoding processes, for sources that use them)."""
    if isinstance(spec, FashionMNISTSpec):
        return FashionMNISTSource(spec.root, name=spec.name)
    if isinstance(spec, ImageFolderSpec):
        return ImageFolderSource(spec.root, test_fraction=spec.test_fraction, split_seed=spec.split_seed,
                                 channels=spec.channels, resize=spec.resize, name=spec.name,
                                 allow_16bit=spec.allow_16bit, keep_jpeg=spec.keep_jpeg, workers=workers)
    if isinstance(spec, CifarSpec):
        return cifar_source(spec.root, name=spec.name)
    if isinstance(spec, NpzSpec):
        return npz_source(spec.path, test_fraction=spec.test_fraction, split_seed=spec.split_seed,
                          name=spec.name, classes=spec.classes)
    if isinstance(spec, WebDatasetSpec):
        return ShardSource(spec.urls, classes=spec.classes, name=spec.name)
    if isinstance(spec, PtSpec):
        return PtSource(spec.path, name=spec.name)
    if isinstance(spec, HFDiskSpec):
        return HFDiskSource(spec.root, name=spec.name)
    raise TypeError(f"unknown source spec {type(spec).__name__}")


__all__ = [
    "FASHION_MNIST_CLASSES", "ArtifactSpec", "CifarSpec", "FashionMNISTSpec", "ImageFolderSpec", "NpzSpec", "Sample",
    "Source", "SourceSpec", "WebDatasetSpec", "build_source",
]
