"""DDOQ / D4M per-class quantization, distillation to a SyntheticSet, and the img2img pushforward."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from ddcore.errors import ConfigError, WeightsError
from ddcore.latent.ddoq import DDOQConfig, distill_ddoq, quantize_class
from ddcore.latent.kmeans import assign, w2_uniform, w2_weighted
from ddcore.latent.pushforward import (
    PushforwardConfig,
    img2img_latents,
    load_denoiser,
    load_pushforward,
    save_denoiser,
)
from ddcore.latent.vae import VAEConfig, build_vae, decode, encode

VAE_CFG = VAEConfig(block_out_channels=(8, 16, 16), norm_num_groups=8, latent_channels=2)
NUM_CLASSES, PER_CLASS, SIZE = 3, 40, 16


def clustered_latents(n: int, seed: int, sizes=(0.5, 0.3, 0.15, 0.05)) -> torch.Tensor:
    """Latents [n, 2, 3, 3] drawn from an unbalanced 4-component Gaussian mixture."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(sizes), 2, 3, 3, generator=g) * 4.0
    comp = torch.multinomial(torch.tensor(sizes), n, replacement=True, generator=g)
    return centres[comp] + 0.5 * torch.randn(n, 2, 3, 3, generator=g)


def class_images(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel [0, 1] images [NUM_CLASSES * PER_CLASS, 1, SIZE, SIZE]; class c is brighter in band c."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(PER_CLASS)
    x = 0.2 * torch.rand(labels.numel(), 1, SIZE, SIZE, generator=g)
    for c in range(NUM_CLASSES):
        x[labels == c, :, 4 * c : 4 * c + 5, :] += 0.6
    return x.clamp(0, 1), labels


def batches(z: torch.Tensor, size: int = 7):
    return lambda: iter([z[i : i + size] for i in range(0, z.shape[0], size)])


def test_quantize_class_weights_are_cell_masses() -> None:
    """quantize_class gives K centroids of the latent shape, exact cell counts summing to N, DDOQ
    weights = counts / N (sum 1); D4M gives uniform weights and sqrt_mass a renormalised sqrt."""
    z = clustered_latents(300, seed=1)
    cfg = DDOQConfig(ipc=4, iters=30, batch_size=32, seed=0)
    cent, w, counts = quantize_class(batches(z), cfg, torch.Generator().manual_seed(0))
    assert cent.shape == (4, 2, 3, 3) and w.shape == counts.shape == (4,)
    assert int(counts.sum()) == 300
    assert torch.equal(counts, torch.bincount(assign(z, cent)[0], minlength=4))
    assert torch.allclose(w, counts.double() / 300) and float(w.sum()) == pytest.approx(1.0)
    # the mass-weighted quantizer is closer (W2) to the class latents than the uniform one
    assert w2_weighted(z, cent, w) < w2_uniform(z, cent)
    _, wu, _ = quantize_class(
        batches(z), cfg.model_copy(update={"variant": "d4m"}), torch.Generator().manual_seed(0)
    )
    assert torch.allclose(wu, torch.full((4,), 0.25, dtype=torch.float64))
    cfg_s = cfg.model_copy(update={"weights": "sqrt_mass"})
    _, ws, cs = quantize_class(batches(z), cfg_s, torch.Generator().manual_seed(0))
    assert torch.allclose(ws, cs.double().sqrt() / cs.double().sqrt().sum())


def test_distill_ddoq_returns_ipc_weighted_images() -> None:
    """distill_ddoq returns ipc images per class in normalised space with labels, per-image weights
    (mean 1 per class), raw cell masses summing to 1 in extra, recorded seeds; it is deterministic."""
    x, y = class_images()
    vae = build_vae(VAE_CFG, 1, SIZE)
    z = encode(vae, x)
    mean, std = (0.3,), (0.25,)
    cfg = DDOQConfig(ipc=3, iters=12, batch_size=16, seed=5)

    def by_class(c: int):
        zc = z[y == c]
        return iter([zc[i : i + 9] for i in range(0, zc.shape[0], 9)])

    res = distill_ddoq(by_class, vae, cfg, num_classes=NUM_CLASSES, mean=mean, std=std, image_size=SIZE)
    s = res.synthetic
    assert s.images.shape == (NUM_CLASSES * 3, 1, SIZE, SIZE) and s.ipc == 3
    assert [tuple(c.shape) for c in res.centroids] == [(3, *z.shape[1:])] * NUM_CLASSES  # returned, not hooked
    assert len(res.quantize_seconds) == NUM_CLASSES and min(res.quantize_seconds) >= 0
    assert torch.equal(s.labels, torch.arange(NUM_CLASSES).repeat_interleave(3))
    assert s.weights is not None and s.weights.shape == (NUM_CLASSES * 3,)
    assert torch.allclose(s.weights.view(NUM_CLASSES, 3).mean(1), torch.ones(NUM_CLASSES))
    for masses, counts in zip(s.extra["cell_masses"], s.extra["cell_counts"], strict=True):
        assert sum(masses) == pytest.approx(1.0) and sum(counts) == PER_CLASS
    assert s.method == "ddoq" and s.seeds["kmeans"] == 5 and "kmeans_class_2" in s.seeds
    pix = s.pixels()
    assert pix.min() >= -1e-5 and pix.max() <= 1 + 1e-5
    json.dumps(s.extra), json.dumps(s.config)
    again = distill_ddoq(by_class, vae, cfg, num_classes=NUM_CLASSES, mean=mean, std=std, image_size=SIZE).synthetic
    assert torch.equal(s.images, again.images) and torch.equal(s.weights, again.weights)
    d4m = distill_ddoq(
        by_class,
        vae,
        cfg.model_copy(update={"variant": "d4m", "weight_scale": "sum_one"}),
        num_classes=NUM_CLASSES,
        mean=mean,
        std=std,
        image_size=SIZE,
    ).synthetic
    assert d4m.method == "d4m" and torch.allclose(d4m.weights, torch.full((9,), 1 / 3))


def test_ddoq_set_does_not_depend_on_the_thread_count() -> None:
    """On the same latents, DDOQ gives byte-identical centroids, counts and decoded images with 1 and with 2
    torch threads (pairwise distances summed in a fixed order, decoding in float64), so a set's bytes do
    not depend on the runner that made it."""
    x, y = class_images()
    vae = build_vae(VAEConfig(block_out_channels=(8, 16), norm_num_groups=8, latent_channels=2), 1, SIZE).eval()
    z = encode(vae, x)
    cfg = DDOQConfig(ipc=3, seed=2)
    made = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            made.append(distill_ddoq(lambda c: iter([z[y == c]]), vae, cfg, num_classes=NUM_CLASSES, mean=(0.5,),
                                     std=(0.5,), image_size=SIZE))
    finally:
        torch.set_num_threads(before)
    a, b = made
    assert all(torch.equal(p, q) for p, q in zip(a.centroids, b.centroids, strict=True))
    assert a.synthetic.extra["cell_counts"] == b.synthetic.extra["cell_counts"]
    assert torch.equal(a.synthetic.images, b.synthetic.images)


def test_ddoq_config_rejects_bad_values() -> None:
    """Unknown keys and out-of-range values in the DDOQ config are one-line ConfigErrors."""
    with pytest.raises(ConfigError, match="unknown key"):
        DDOQConfig.from_mapping({"ipcs": 10})
    with pytest.raises(ConfigError, match="weights"):
        DDOQConfig.from_mapping({"weights": "sqrt"})


def tiny_unet(num_classes: int | None, seed: int = 0):
    from diffusers import UNet2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DModel(
            sample_size=4,
            in_channels=2,
            out_channels=2,
            layers_per_block=1,
            block_out_channels=(16, 32),
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
            num_class_embeds=None if num_classes is None else num_classes + 1,
        )


def test_pushforward_folder_roundtrip_and_distill(tmp_path: Path) -> None:
    """A tiny class-conditional UNet + DDIM + VAE saved as a folder loads back; img2img with strength 0
    is the identity; with strength > 0 it is seeded and changes the latents; distill_ddoq accepts it
    and records its seed."""
    from diffusers import DDIMScheduler, DDPMScheduler

    vae = build_vae(VAE_CFG, 1, SIZE)
    folder = tmp_path / "denoiser"
    save_denoiser(folder, tiny_unet(NUM_CLASSES), DDIMScheduler(num_train_timesteps=100), vae)
    model = load_denoiser(folder)
    assert model.num_classes == NUM_CLASSES and model.vae is not None
    x, y = class_images()
    z0 = encode(vae, x[:4])
    lab = y[:4]
    kw = dict(guidance=3.0, steps=5)
    assert torch.equal(img2img_latents(model, z0, lab, strength=0.0, generator=torch.Generator(), **kw), z0)
    a = img2img_latents(model, z0, lab, strength=0.6, generator=torch.Generator().manual_seed(1), **kw)
    b = img2img_latents(model, z0, lab, strength=0.6, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(a, b) and not torch.allclose(a, z0) and torch.isfinite(a).all()
    pf = load_pushforward(PushforwardConfig(path=str(folder), strength=0.5, steps=4, seed=9), image_size=SIZE)
    zc = encode(vae, x)

    def by_class(c: int):
        return iter([zc[y == c]])

    s = distill_ddoq(
        by_class,
        vae,
        DDOQConfig(ipc=2, iters=3, batch_size=8),
        num_classes=NUM_CLASSES,
        mean=(0.5,),
        std=(0.5,),
        pushforward=pf,
    ).synthetic
    assert s.images.shape == (NUM_CLASSES * 2, 1, SIZE, SIZE) and s.seeds["pushforward"] == 9
    # unconditional UNet + DDPM works without labels
    save_denoiser(tmp_path / "uncond", tiny_unet(None), DDPMScheduler(num_train_timesteps=50))
    un = load_denoiser(tmp_path / "uncond")
    out = img2img_latents(un, z0, None, strength=0.5, guidance=1.0, steps=4, generator=torch.Generator())
    assert out.shape == z0.shape
    assert decode(vae, out).shape == (4, 1, SIZE, SIZE)


def test_pushforward_missing_or_bad_folder_is_weights_error(tmp_path: Path) -> None:
    """A missing pushforward folder, a missing UNet, a folder without a VAE when none is passed, or an
    unsupported scheduler raise one-line WeightsErrors."""
    from diffusers import DDIMScheduler, PNDMScheduler

    with pytest.raises(WeightsError, match="not found"):
        load_pushforward(PushforwardConfig(path=str(tmp_path / "none")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="UNet"):
        load_denoiser(tmp_path / "empty")
    save_denoiser(tmp_path / "novae", tiny_unet(None), DDIMScheduler(num_train_timesteps=10))
    with pytest.raises(WeightsError, match="no vae"):
        load_pushforward(PushforwardConfig(path=str(tmp_path / "novae")))
    save_denoiser(tmp_path / "pndm", tiny_unet(None), PNDMScheduler(num_train_timesteps=10))
    with pytest.raises(WeightsError, match="not supported") as info:
        load_denoiser(tmp_path / "pndm")
    assert "\n" not in str(info.value)
