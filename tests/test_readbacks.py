"""The device path reads no value back to the host, checked on the CPU.

On a GPU every ``.item()``, ``bool(tensor)``, ``float(tensor)`` or ``nonzero`` in an inner loop stalls the launch
queue until the device catches up. The GPU suite counts those stalls with torch's sync debug mode (tests/test_gpu.py)
but only runs where CUDA is; CI has none. Every such read dispatches ``aten::_local_scalar_dense`` (or
``nonzero``, whose output size is a value) on any device, so counting those ops here catches a read-back added to
the device path before a GPU run would. The other kind of stall, a blocking host-to-device copy (as
``torch.tensor(k, device='cuda')`` makes), has no CPU counterpart and stays the GPU suite's to find.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ddcore.augment.dsa import apply_each, draw_params
from ddcore.distill.losses import dm_loss_batched, hdd_loss_batched, ncfm_loss_batched
from ddcore.nets.convnet import ConvNet
from ddcore.nets.fast import fast_embed, prepare
from ddcore.nets.registry import reinit_

READS = ("_local_scalar_dense", "nonzero", "item")


class Reads(TorchDispatchMode):
    """Counts the aten ops that read a value back to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = func.overloadpacket.__name__
        if name in READS:
            self.seen[name] += 1
        return func(*args, **(kwargs or {}))


def _reads(fn: Any) -> Counter[str]:
    with Reads() as r:
        fn()
    return r.seen


@pytest.mark.parametrize("px", [28, 32])
def test_the_device_form_of_the_embedding_reads_nothing_back(px: int) -> None:
    """fast_embed(sync_free=True), the form a GPU runs, reads no value back; the host form does (it branches on
    values, which costs nothing on the CPU): the count is a real check, not an empty one."""
    net = prepare(reinit_(ConvNet(channels=1, num_classes=3, image_size=px, width=16, depth=3), 0))
    net.requires_grad_(False)
    x = torch.randn(12, 1, px, px, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert _reads(lambda: fast_embed(net, x, sync_free=True)) == Counter()
        assert sum(_reads(lambda: fast_embed(net, x, sync_free=False)).values()) > 0


def test_batched_losses_with_chunk_local_labels_read_nothing_back() -> None:
    """DM, HDD and NCFM batched losses under all_present=True (what the steps pass) read no value back, forward
    and backward; without that guarantee the class check reads the labels (the control)."""
    g = torch.Generator().manual_seed(1)
    real, syn = torch.randn(12, 8, generator=g), torch.randn(6, 8, generator=g).requires_grad_(True)
    rl, sl = torch.arange(3).repeat_interleave(4), torch.arange(3).repeat_interleave(2)
    t = torch.randn(16, 8, generator=g)
    kw = {"real_labels": rl, "syn_labels": sl, "num_classes": 3, "all_present": True}
    losses = {
        "dm": lambda: dm_loss_batched(real, syn, **kw),
        "hdd": lambda: hdd_loss_batched(real, syn, k=1.0, scale=1.0, clamp_radius=10.0, **kw),
        "ncfm": lambda: ncfm_loss_batched(real, syn, t, alpha=0.5, beta=0.5, scale=1.0, **kw),
    }
    for name, loss in losses.items():
        assert _reads(lambda loss=loss: loss().backward()) == Counter(), name
    assert sum(_reads(lambda: dm_loss_batched(real, syn, real_labels=rl, syn_labels=sl)).values()) > 0


def test_grouped_augmentation_reads_nothing_back() -> None:
    """apply_each over Siamese draws of every family reads no value back."""
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(n, 3, 16, 16, generator=g) for n in (4, 2, 5, 3, 4, 2, 6, 1)]
    params = [draw_params("color_crop_cutout_flip_scale_rotate", batch=x.shape[0], image_shape=(3, 16, 16),
                          generator=g, siamese=True) for x in xs]
    assert _reads(lambda: apply_each(xs, params)) == Counter()
