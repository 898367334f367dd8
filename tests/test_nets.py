"""Networks: embedding sizes, seeded construction, in-place re-initialisation, name errors, and the one
network spec (name, width, depth) every config shares."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from ddcore.distill.config import BaselineConfig, DistillConfig
from ddcore.errors import ConfigError
from ddcore.evaluate.protocol import EvalConfig
from ddcore.evaluate.teacher import TeacherConfig
from ddcore.nets import NETWORK_NAMES, build_network, embed_dim, reinit_
from ddcore.nets.spec import NetworkSpec
from ddcore.prune.core import PruneConfig

EXPECTED_DIM = {
    # name: {image_size: D}
    "convnet": {28: 2048, 32: 2048, 64: 8192},
    "convnet-4": {28: 512, 32: 512, 64: 2048},
    "convnet-bn": {28: 2048, 32: 2048, 64: 8192},
    "convnet-nonorm": {28: 2048, 32: 2048, 64: 8192},
    "resnet18-bn": {28: 512, 32: 512, 64: 512},
    "resnet18-in": {28: 512, 32: 512, 64: 512},
    "alexnet": {28: 3072, 32: 3072, 64: 12288},
    "vgg11": {28: 512, 32: 512, 64: 2048},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_DIM))
def test_embed_dims_at_28_32_64_px_and_1_3_channels(name: str) -> None:
    """embed(x) is [B, D] with the documented D for 28/32/64 px and 1/3 channels; forward gives logits."""
    for size, dim in EXPECTED_DIM[name].items():
        for channels in (1, 3):
            net = build_network(name, channels=channels, num_classes=7, image_size=size, seed=0).eval()
            with torch.no_grad():
                feats = net.embed(torch.randn(1, channels, size, size))
                logits = net.classifier(feats)  # forward(x) == classifier(embed(x))
            assert feats.shape == (1, dim)
            assert embed_dim(net, channels, size) == dim
            assert logits.shape == (1, 7)


def test_convnet_depth_from_argument_and_128px_depth5() -> None:
    """'convnet' takes its depth from the argument; ConvNet-5 at 128 px embeds to 2048-d, as at 32 px depth 3."""
    net = build_network("convnet", channels=3, num_classes=10, image_size=128, seed=0, depth=5, width=16)
    assert net.embed(torch.zeros(1, 3, 128, 128)).shape == (1, 16 * 4 * 4)
    net5 = build_network("convnet-5", channels=3, num_classes=10, image_size=128, seed=0)
    assert embed_dim(net5, 3, 128) == 2048
    small = build_network("convnet", channels=3, num_classes=10, image_size=32, seed=0, width=8)
    assert embed_dim(small, 3, 64) == 8 * 8 * 8  # a size the net was not built for: probed with one image


def test_all_registered_names_build() -> None:
    """Every name in NETWORK_NAMES builds at 32 px, has an integer embed_dim and forward gives [B, K]."""
    for name in NETWORK_NAMES:
        net = build_network(name, channels=3, num_classes=10, image_size=32, seed=1)
        assert isinstance(embed_dim(net, 3, 32), int)
        with torch.no_grad():
            assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_28px_first_conv_pads_by_3() -> None:
    """For 28 px inputs the ConvNet's first conv pads by 3, so the first block sees 32×32 maps."""
    net = build_network("convnet", channels=1, num_classes=10, image_size=28, seed=0, width=8)
    first = net.features[0]
    assert first.padding == (3, 3)
    assert first(torch.zeros(1, 1, 28, 28)).shape[-1] == 32


def test_seeded_construction_is_deterministic_and_keeps_global_rng() -> None:
    """Same seed → identical weights; different seed → different; the global RNG state is unchanged."""
    before = torch.random.get_rng_state()
    a = build_network("convnet", channels=3, num_classes=10, image_size=32, seed=5, width=16)
    b = build_network("convnet", channels=3, num_classes=10, image_size=32, seed=5, width=16)
    c = build_network("convnet", channels=3, num_classes=10, image_size=32, seed=6, width=16)
    assert torch.equal(torch.random.get_rng_state(), before)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    assert not torch.equal(a.features[0].weight, c.features[0].weight)


def test_reinit_in_place_equals_fresh_build_and_keeps_global_rng() -> None:
    """reinit_(net, s) gives exactly build_network(seed=s)'s weights (incl. BN stats) without touching the RNG."""
    net = build_network("resnet18-bn", channels=1, num_classes=4, image_size=28, seed=0)
    net(torch.randn(4, 1, 28, 28))  # moves BN running stats
    before = torch.random.get_rng_state()
    reinit_(net, 3)
    assert torch.equal(torch.random.get_rng_state(), before)
    ref = build_network("resnet18-bn", channels=1, num_classes=4, image_size=28, seed=3)
    for (k, v), (_, r) in zip(net.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(v, r), k


def test_default_init_distribution_bounds() -> None:
    """Conv/linear parameters lie in U(-1/sqrt(fan_in), 1/sqrt(fan_in)) and norm layers start at (1, 0)."""
    net = build_network("convnet", channels=3, num_classes=10, image_size=32, seed=0, width=32)
    conv, norm = net.features[0], net.features[1]
    bound = 1.0 / (3 * 9) ** 0.5
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.8 * bound
    assert torch.equal(norm.weight, torch.ones(32)) and torch.equal(norm.bias, torch.zeros(32))


def test_unknown_name_is_one_line_config_error_listing_valid_names() -> None:
    """An unknown name raises ConfigError whose single-line message lists the valid names."""
    with pytest.raises(ConfigError) as info:
        build_network("convnet-9", channels=3, num_classes=10, image_size=32, seed=0)
    msg = str(info.value)
    assert "\n" not in msg and "convnet-4" in msg and "resnet18-bn" in msg


def test_conflicting_depth_is_config_error() -> None:
    """A depth that contradicts the name, or a depth for a non-ConvNet, is a ConfigError."""
    with pytest.raises(ConfigError):
        build_network("convnet-4", channels=3, num_classes=10, image_size=32, seed=0, depth=3)
    with pytest.raises(ConfigError):
        build_network("resnet18", channels=3, num_classes=10, image_size=32, seed=0, depth=3)
    with pytest.raises(ConfigError):
        build_network("convnet", channels=3, num_classes=10, image_size=32, seed=0, depth=6)


def test_embedding_passes_gradient_to_input_with_frozen_weights() -> None:
    """With parameters frozen (as in DM), embed(x) still back-propagates to the input images."""
    net = build_network("convnet", channels=3, num_classes=10, image_size=32, seed=0, width=8)
    net.requires_grad_(False)
    x = torch.randn(3, 3, 32, 32, requires_grad=True)
    net.embed(x).mean(0).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


NETWORK_CONFIGS = [  # every stage config that names a network, with the other keys it needs
    (DistillConfig, {"method": "dm"}), (BaselineConfig, {"method": "herding"}), (PruneConfig, {}),
    (EvalConfig, {}), (TeacherConfig, {}),
]


@pytest.mark.parametrize(("cls", "base"), NETWORK_CONFIGS, ids=lambda v: getattr(v, "__name__", ""))
def test_every_config_naming_a_network_shares_one_validator(cls: type, base: dict) -> None:
    """Unknown names and depths that contradict the name fail at config time with the same one-line
    message in every config (keyed on the field), and network_spec builds what build_network builds."""
    with pytest.raises(ConfigError, match=r"'network': .*unknown network 'resnet99'; valid names: convnet,"):
        cls.from_mapping({**base, "network": "resnet99"})
    with pytest.raises(ConfigError, match="depth applies to ConvNet only; drop depth=3 for network 'resnet18'"):
        cls.from_mapping({**base, "network": "resnet18", "depth": 3})
    with pytest.raises(ConfigError, match="network 'convnet-4' has depth 4 but depth=3 was given"):
        cls.from_mapping({**base, "network": "convnet-4", "depth": 3})
    cfg = cls.from_mapping({**base, "network": "convnet", "width": 8, "depth": 2})
    assert cfg.network_spec == NetworkSpec("convnet", 8, 2)
    a = cfg.network_spec.build(channels=1, num_classes=3, image_size=16, seed=4)
    b = build_network("convnet", channels=1, num_classes=3, image_size=16, seed=4, width=8, depth=2)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    with pytest.raises(ValidationError):  # the mixin keeps the configs frozen
        cfg.network = "alexnet"
