"""The fast embedding (``ddcore.nets.fast``) computes what ``net.embed`` computes."""

from __future__ import annotations

import pytest
import torch

from ddcore.nets.convnet import ConvNet
from ddcore.nets.fast import fast_embed, pool_2x2_nhwc, prepare
from ddcore.nets.registry import reinit_

VARIANTS = [(norm, ch, px) for norm in ("instancenorm", "batchnorm", "none") for ch, px in ((1, 28), (3, 32))]


def _pair(norm: str, ch: int, px: int, seed: int = 3, depth: int = 3) -> tuple[ConvNet, ConvNet]:
    """A plain NCHW ConvNet and a channels_last copy with the same (frozen) weights."""
    ref = reinit_(ConvNet(channels=ch, num_classes=4, image_size=px, width=32, depth=depth, norm=norm), seed)
    fast = prepare(ConvNet(channels=ch, num_classes=4, image_size=px, width=32, depth=depth, norm=norm))
    fast.load_state_dict(ref.state_dict())
    for p in [*ref.parameters(), *fast.parameters()]:
        p.requires_grad_(False)
    return ref, fast


def _images(n: int, ch: int, px: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, ch, px, px, generator=g) * 1.3 + 0.2


@pytest.mark.parametrize("sync_free", [False, True])
@pytest.mark.parametrize(("norm", "ch", "px"), VARIANTS)
def test_no_grad_embedding_equals_net_embed(norm: str, ch: int, px: int, sync_free: bool) -> None:
    """Without autograd the fast embedding equals net.embed within 1e-5 for every ConvNet variant
    (instance/no norm, 1 and 3 channels, 28 and 32 px); batch norm (train-mode batch statistics summed
    in another order under channels_last) within 1e-4. Both forms: the host's branching one and the GPU's
    no-read-back one (``sync_free``, run here on the CPU)."""
    ref, fast = _pair(norm, ch, px)
    x = _images(24, ch, px)
    want = ref.embed(x)
    with torch.no_grad():
        got = fast_embed(fast, x, sync_free=sync_free)
    tol = 1e-4 if norm == "batchnorm" else 1e-5
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize(("norm", "ch", "px"), VARIANTS)
def test_gradients_wrt_synthetic_input_match(norm: str, ch: int, px: int) -> None:
    """With autograd on the input, features and d(loss)/d(input) equal those of net.embed."""
    ref, fast = _pair(norm, ch, px)
    x = _images(6, ch, px, seed=2)
    target = torch.randn(ref.embed_dim, generator=torch.Generator().manual_seed(5))
    grads, feats = [], []
    for net, fn in ((ref, lambda n, v: n.embed(v)), (fast, fast_embed)):
        xi = x.clone().requires_grad_(True)
        f = fn(net, xi)
        ((f.mean(0) - target) ** 2).sum().backward()
        grads.append(xi.grad)
        feats.append(f.detach())
    torch.testing.assert_close(feats[1], feats[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sync_free", [False, True])
def test_fused_norm_handles_negative_scale_and_large_means(sync_free: bool) -> None:
    """Blended/trained nets (negative norm scales, shifted conv outputs, far-out thresholds) take the
    plain in-place path or the centred variance (the branching form) or need no test at all (the
    no-read-back form), and both still match net.embed within 1e-5."""
    ref, fast = _pair("instancenorm", 1, 28, depth=2)
    with torch.no_grad():
        for net in (ref, fast):
            gn = net.features[1]
            gn.weight.copy_(torch.linspace(-1.5, 1.5, gn.num_channels))
            gn.bias.copy_(torch.linspace(-0.5, 0.7, gn.num_channels))
            net.features[4].bias.add_(20.0)  # block-2 conv outputs with mean >> std
            net.features[5].bias.fill_(-300.0)  # thresholds far beyond the values
    x = _images(8, 1, 28)
    with torch.no_grad():
        torch.testing.assert_close(fast_embed(fast, x, sync_free=sync_free), ref.embed(x), rtol=1e-5, atol=1e-5)


def test_bfloat16_is_opt_in_and_close() -> None:
    """The default is float32 (exact path); real_dtype=bfloat16 is opt-in, returns float32 features and
    stays within bf16 rounding (2e-2 relative) of net.embed."""
    ref, fast = _pair("instancenorm", 1, 28)
    x = _images(16, 1, 28)
    want = ref.embed(x)
    with torch.no_grad():
        got = fast_embed(fast, x, real_dtype=torch.bfloat16)
    assert got.dtype == torch.float32
    err = (got - want).norm() / want.norm()
    assert 0 < float(err) < 2e-2


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("shape", [(3, 16, 28, 28), (2, 7, 14, 6), (1, 1, 2, 2)])
def test_nhwc_pooling_equals_avg_pool2d(shape: tuple[int, ...], seed: int) -> None:
    """The device form's 2x2 pooling over the NHWC storage equals F.avg_pool2d (to rounding) and stays
    channels-last."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*shape, generator=g).contiguous(memory_format=torch.channels_last)
    got = pool_2x2_nhwc(h)
    torch.testing.assert_close(got, torch.nn.functional.avg_pool2d(h.contiguous(), 2), rtol=1e-6, atol=1e-7)
    assert got.is_contiguous(memory_format=torch.channels_last) or got.shape[1] == 1
