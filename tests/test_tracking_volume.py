"""A 1,000-class set keeps the MLflow UI usable: its image grid shows a bounded number of classes, and per-class
figures travel as one table (one row per class), not as one metric key per class."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch
from PIL import Image

from ddcore.synthetic import SyntheticSet
from tasks.distill import GRID_CLASSES, grid_classes, per_class_table, synthetic_grid


@pytest.mark.parametrize("k", [1, 10, 50, 51, 1000])
def test_grid_classes_are_bounded_sorted_and_span_the_range(k: int) -> None:
    """At most GRID_CLASSES distinct classes, sorted, the first and the last included; all of them when few."""
    shown = grid_classes(k)
    assert shown == sorted(set(shown)) and len(shown) == min(k, GRID_CLASSES)
    assert shown[0] == 0 and shown[-1] == k - 1


def _set(k: int, ipc: int = 2) -> SyntheticSet:
    g = torch.Generator().manual_seed(0)
    return SyntheticSet(images=torch.rand(k * ipc, 3, 8, 8, generator=g), labels=torch.arange(k).repeat_interleave(ipc),
                        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), num_classes=k, method="ddoq")


def test_a_thousand_class_grid_has_fifty_rows() -> None:
    """The grid PNG of a 1,000-class set has GRID_CLASSES rows of images, not 1,000."""
    one_row = Image.open(io.BytesIO(synthetic_grid(_set(1), ["c0"]))).size[1]
    many = Image.open(io.BytesIO(synthetic_grid(_set(1000), [f"c{i}" for i in range(1000)]))).size[1]
    assert many < GRID_CLASSES * one_row * 1.5


def test_per_class_figures_become_one_table_row_per_class() -> None:
    """Class sizes, quantization errors, k-means times and empty cells land in one CSV row per class, by name."""
    k = 1000
    sset = _set(k)
    rng = np.random.default_rng(0)
    sset.extra.update(class_sizes=list(rng.integers(1, 100, k)), quantization_error=list(rng.random(k)),
                      kmeans_seconds=list(rng.random(k)), cell_counts=[[0, 3]] * (k - 1) + [[1, 2]])
    rows = list(csv.DictReader(io.StringIO(per_class_table(sset, [f'n{i:08d}, "x"' for i in range(k)]))))
    assert len(rows) == k and rows[7]["name"] == 'n00000007, "x"'
    assert int(rows[7]["class_sizes"]) == sset.extra["class_sizes"][7]
    assert float(rows[7]["quantization_error"]) == pytest.approx(sset.extra["quantization_error"][7], rel=1e-5)
    assert [r["empty_cells"] for r in rows[-2:]] == ["1", "0"]
    assert per_class_table(_set(3), ["a", "b", "c"]) is None  # a set without per-class figures logs no table
