"""The ImageNet-shaped generator (benchmarks/imagenet_like.py): deterministic bytes, the same JPEGs in both
layouts, distinct class recipes, and classes a simple classifier separates (so accuracies mean something)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.imagenet_like import MAX_CLASSES, class_recipe, generate


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_the_same_arguments_give_the_same_bytes_and_both_layouts_hold_the_same_jpegs(tmp_path: Path) -> None:
    """Two runs write identical trees; every ImageFolder JPEG is in a shard under its key with its class."""
    import tarfile

    for d in ("a", "b"):
        generate(tmp_path / d, classes=3, per_class=4, val_per_class=2, size=24, shard_size=5)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    members = {}
    for p in sorted((tmp_path / "a" / "shards").glob("*.tar")):
        with tarfile.open(p) as t:
            members.update({m.name: t.extractfile(m).read() for m in t})
    folder = sorted((tmp_path / "a").glob("*/n*/*.JPEG"))
    assert len(folder) == 3 * 6 and len(members) == 2 * len(folder)
    for f in folder:
        assert members[f"{f.stem}.jpg"] == f.read_bytes()
        assert members[f"{f.stem}.cls"] == str(int(f.parent.name[1:])).encode()
        assert Image.open(f).size == (24, 24) and Image.open(f).mode == "RGB"


def test_every_class_has_its_own_recipe() -> None:
    """Shape x hue x stripe angle differ for every pair of the 1,024 classes the generator can make."""
    assert len({class_recipe(c) for c in range(MAX_CLASSES)}) == MAX_CLASSES == 1024


def test_classes_are_learnable_by_a_small_convnet(tmp_path: Path) -> None:
    """On 10 classes, a three-layer ConvNet trained briefly on 20 images per class classifies held-out images far
    above chance (10 %): the classes carry signal that survives the per-image jitter and the JPEG."""
    import torch

    from ddcore.threads import torch_threads

    generate(tmp_path, classes=10, per_class=20, val_per_class=10, size=32, formats=("folder",))

    def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        files = sorted((tmp_path / split).glob("n*/*.JPEG"))
        x = np.stack([np.asarray(Image.open(f), np.float32) for f in files]) / 255.0
        return torch.from_numpy(x).permute(0, 3, 1, 2) - 0.5, torch.tensor([int(f.parent.name[1:]) for f in files])

    (xt, yt), (xv, yv) = load("train"), load("val")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    with torch_threads(1):
        for _ in range(30):
            for idx in torch.randperm(len(yt)).split(50):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
                opt.step()
        with torch.no_grad():
            acc = (net(xv).argmax(1) == yv).float().mean().item()
    assert acc > 0.5
