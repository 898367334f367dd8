"""Ingest sources and their typed configs (one discriminated union keyed by ``kind``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ddcore.config import StageConfig
from ddcore.data.sources.arrays import cifar_source, npz_source
from ddcore.data.sources.base import Sample, Source
from ddcore.data.sources.folder import ImageFolderSource
from ddcore.data.sources.idx import FASHION_MNIST_CLASSES, FashionMNISTSource
from ddcore.data.sources.shards import ShardSource


class FashionMNISTSpec(StageConfig):
    kind: Literal["fashion_mnist"] = "fashion_mnist"
    root: str | None = None
    name: str = "fashion-mnist"


class ImageFolderSpec(StageConfig):
    kind: Literal["image_folder"] = "image_folder"
    root: str
    name: str | None = None
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    split_seed: int = 0
    channels: Literal[1, 3] | None = None
    resize: tuple[int, int] | None = None


class CifarSpec(StageConfig):
    kind: Literal["cifar"] = "cifar"
    root: str
    name: str | None = None


class NpzSpec(StageConfig):
    kind: Literal["npz"] = "npz"
    path: str
    name: str | None = None
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    split_seed: int = 0
    classes: list[str] | None = None


class WebDatasetSpec(StageConfig):
    kind: Literal["webdataset"] = "webdataset"
    urls: dict[str, str]
    name: str = "webdataset"
    classes: list[str] | None = None


SourceSpec = Annotated[
    FashionMNISTSpec | ImageFolderSpec | CifarSpec | NpzSpec | WebDatasetSpec, Field(discriminator="kind")
]


def build_source(spec: StageConfig) -> Source:
    """Instantiate the reader for a source spec."""
    if isinstance(spec, FashionMNISTSpec):
        return FashionMNISTSource(spec.root, name=spec.name)
    if isinstance(spec, ImageFolderSpec):
        return ImageFolderSource(spec.root, test_fraction=spec.test_fraction, split_seed=spec.split_seed,
                                 channels=spec.channels, resize=spec.resize, name=spec.name)
    if isinstance(spec, CifarSpec):
        return cifar_source(spec.root, name=spec.name)
    if isinstance(spec, NpzSpec):
        return npz_source(spec.path, test_fraction=spec.test_fraction, split_seed=spec.split_seed,
                          name=spec.name, classes=spec.classes)
    if isinstance(spec, WebDatasetSpec):
        return ShardSource(spec.urls, classes=spec.classes, name=spec.name)
    raise TypeError(f"unknown source spec {type(spec).__name__}")


__all__ = [
    "FASHION_MNIST_CLASSES", "CifarSpec", "FashionMNISTSpec", "ImageFolderSpec", "NpzSpec", "Sample",
    "Source", "SourceSpec", "WebDatasetSpec", "build_source",
]
