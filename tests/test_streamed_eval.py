"""Evaluation against a test split streamed batch by batch (no whole-split tensor) equals evaluation against the
same split in memory; the memory budget decides which one a stage gets. Real artifacts (Parquet manifest, tar
shards) made from scikit-learn's digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ddcore.data import IngestConfig, ingest, open_artifact
from ddcore.evaluate import EvalConfig, train_and_evaluate
from ddcore.evaluate.test_data import StreamedSplit, load_test_split, split_batches
from ddcore.threads import torch_threads


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sklearn.datasets import load_digits

    d = load_digits()
    root = tmp_path_factory.mktemp("digits")
    x = (d.images * 255 / 16).round().astype(np.uint8)
    np.savez(root / "digits.npz", x=x, y=d.target.astype(np.int64))
    out = root / "art"
    ingest(IngestConfig.from_mapping({"source": {"kind": "npz", "path": str(root / "digits.npz"),
                                                 "test_fraction": 0.3}, "shard_size": 100}), out)
    return out


def test_the_budget_decides_between_a_tensor_and_a_stream(digits: Path) -> None:
    """Under the budget the split is a tensor; over it a StreamedSplit with the same shape and manifest labels."""
    art = open_artifact(digits)
    x, y = load_test_split(art, "test", memory_mb=100)
    s, sy = load_test_split(art, "test", memory_mb=0)
    assert isinstance(x, torch.Tensor) and isinstance(s, StreamedSplit)
    assert s.shape == x.shape and torch.equal(sy, y)


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_hold_the_split_and_the_labels_of_each_key(digits: Path, workers: int) -> None:
    """Every test sample comes once, with the pixels and label the in-memory split has for it."""
    art = open_artifact(digits)
    x, y = art.load_split("test")
    got_x, got_y = zip(*StreamedSplit(art, "test", workers=workers).batches(64), strict=True)
    gx, gy = torch.cat(got_x), torch.cat(got_y)
    assert gx.shape == x.shape

    def rows(images: torch.Tensor, labels: torch.Tensor) -> np.ndarray:  # (label, pixels), sorted as rows
        table = np.concatenate([labels[:, None].numpy(), images.flatten(1).numpy()], axis=1)
        return table[np.lexsort(table.T[::-1])]

    assert np.array_equal(rows(gx, gy), rows(x, y))
    if workers == 0:  # one loader: stored order, the in-memory batches exactly
        assert all(torch.equal(a, b) for (a, _), (b, _) in zip(StreamedSplit(art, "test", workers=0).batches(64),
                                                               split_batches(x, y, 64), strict=True))


def test_evaluation_through_the_stream_equals_the_in_memory_evaluation(digits: Path) -> None:
    """Training a network on the real train split and testing every epoch gives the same accuracies whether the
    test split is a tensor or streamed (with loader workers)."""
    art = open_artifact(digits)
    tx, ty = art.load_split("train")
    x, y = art.load_split("test")
    cfg = EvalConfig(epochs=8, width=16, batch_size=32, optimizer="adamw", lr=3e-3, lr_schedule="constant",
                     num_eval=1, test_every=4, augmentation="none")
    with torch_threads(1):
        runs = [train_and_evaluate(tx, ty, images, y, config=cfg, seed=0, num_classes=10)
                for images in (x, StreamedSplit(art, "test", workers=2))]
    assert runs[0].test_accs == runs[1].test_accs and len(runs[0].test_accs) == 3 and runs[0].acc > 0.6
