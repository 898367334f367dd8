"""The pushforward's denoiser (ddcore/latent/denoiser.py, stage train_denoiser): folder round trip, seeded and
resumable training, img2img at strength 0 and on padded latents, clear errors for a broken folder, the plan's
train_denoiser node, and VAE -> latents -> denoiser -> DDOQ with pushforward through run_stage."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from ddcore.data import open_artifact
from ddcore.data.ingestion import IngestConfig
from ddcore.data.synthetic_io import load_synthetic
from ddcore.errors import ConfigError, DDFlowError, WeightsError
from ddcore.latent.ddoq import DDOQConfig
from ddcore.latent.denoiser import DenoiserConfig, build_scheduler, build_unet, fit_denoiser, train_denoiser
from ddcore.latent.method import check_trained_range, distill_from_latents
from ddcore.latent.pushforward import (
    PushforwardConfig,
    img2img_latents,
    load_denoiser,
    load_pushforward,
    read_training_record,
    save_denoiser,
)
from ddcore.latent.reader import open_latents
from ddcore.latent.vae import VAEConfig, build_vae, decode, float64_decoder
from flows.config import RunConfig
from flows.plan import STAGES, build_plan
from flows.plan_view import node_states, to_mermaid
from tasks import get_stage
from tasks.configs import EncodeConfig
from tasks.distill import distill_stage
from tasks.ingest import ingest_stage
from tasks.latents import encode_stage, train_vae_stage
from tasks.runtime import progress
from tasks.runtime.stage import run_stage
from tasks.runtime.store import ArtifactStore

TINY = DenoiserConfig(block_out_channels=(8, 16), norm_num_groups=8, num_train_timesteps=50, epochs=3,
                      batch_size=6, lr=1e-3, seed=4)
VAE_CFG = VAEConfig(block_out_channels=(8, 16, 16), norm_num_groups=8, latent_channels=2, epochs=1, batch_size=60,
                    mid_block_attention=False)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread (and do not fight other processes for the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _latents(n: int = 18, size: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents [n, 2, size, size] whose mean depends on the class (3 classes) and labels [n]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    return torch.randn(n, 2, size, size, generator=g) + y.view(-1, 1, 1, 1).float(), y


def _state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_denoiser_folder_round_trips(tmp_path: Path) -> None:
    """save_denoiser -> load_denoiser gives identical parameters, the same scheduler class and config, the class
    count of the conditional UNet (num_class_embeds - 1) and training.json back."""
    unet, sched = build_unet(TINY, 2, 7, 3), build_scheduler(TINY)
    assert unet.config.num_class_embeds == 4 and unet.config.sample_size == 8  # 7 padded to the factor 2
    save_denoiser(tmp_path / "d", unet, sched, record={"latents_digest": "abc"})
    model = load_denoiser(tmp_path / "d")
    assert _same(_state(unet), _state(model.unet)) and model.num_classes == 3 and model.vae is None
    public = [{k: v for k, v in dict(s.config).items() if not k.startswith("_")} for s in (model.scheduler, sched)]
    assert type(model.scheduler) is type(sched) and public[0] == public[1]
    assert model.scheduler.config.clip_sample is False and model.scheduler.config.beta_schedule == "scaled_linear"
    assert read_training_record(tmp_path / "d") == {"latents_digest": "abc"}
    uncond = build_unet(TINY.model_copy(update={"class_conditional": False}), 2, 7, 3)
    assert uncond.config.num_class_embeds is None


def test_training_is_seeded_and_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """Two runs give the same weights and losses; a run stopped after its first epoch and resumed from the
    checkpoint gives the weights of the uninterrupted run; a checkpoint of another config is refused."""
    data = _latents()
    runs = []
    for _ in range(2):
        unet = build_unet(TINY, 2, 7, 3)
        stats = train_denoiser(unet, data, TINY)
        runs.append((_state(unet), stats.epoch_loss))
    assert _same(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1] and len(runs[0][1]) == 3
    assert stats.n_train == 18 and stats.steps == 9 and all(torch.isfinite(torch.tensor(runs[0][1])))

    def stop(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_denoiser(build_unet(TINY, 2, 7, 3), data, TINY, checkpoint_dir=tmp_path / "ck", progress=stop)
    unet = build_unet(TINY, 2, 7, 3)
    resumed = train_denoiser(unet, data, TINY, checkpoint_dir=tmp_path / "ck")
    assert resumed.start_epoch == 1 and resumed.epochs_run == 2
    assert _same(_state(unet), runs[0][0]) and resumed.epoch_loss == runs[0][1]
    with pytest.raises(ConfigError, match="different denoiser config"):
        train_denoiser(build_unet(TINY, 2, 7, 3), data, TINY.model_copy(update={"lr": 0.5}),
                       checkpoint_dir=tmp_path / "ck")
    sub = fit_denoiser(data, TINY.model_copy(update={"max_train_per_class": 2, "epochs": 1}), tmp_path / "sub")[1]
    assert sub.n_train == 6 and "subset" in sub.seeds


def test_pushforward_strength_zero_is_the_decoded_centroid(tmp_path: Path) -> None:
    """At strength 0 the pushforward returns exactly the decoded centroid (no noise, no UNet; decoded in float64
    like the plain DDOQ set); at strength > 0
    img2img on latents whose size is not a multiple of the UNet factor (7x7, factor 2) keeps their shape, is
    seeded, and changes them."""
    vae = build_vae(VAE_CFG, 1, 16).eval()
    z, y = _latents(6, size=4)
    fit_denoiser((z, y), TINY.model_copy(update={"epochs": 1}), tmp_path / "d")
    pf = load_pushforward(PushforwardConfig(path=str(tmp_path / "d"), strength=0.0, steps=4), vae, image_size=16,
                          channels=1)
    assert torch.equal(pf(z, y), decode(float64_decoder(vae), z, image_size=16, channels=1))
    z7, y7 = _latents(4, size=7)
    save_denoiser(tmp_path / "d7", build_unet(TINY, 2, 7, 3), build_scheduler(TINY))
    model = load_denoiser(tmp_path / "d7")
    kw = {"strength": 0.5, "guidance": 2.0, "steps": 4}
    a = img2img_latents(model, z7, y7, generator=torch.Generator().manual_seed(1), **kw)
    b = img2img_latents(model, z7, y7, generator=torch.Generator().manual_seed(1), **kw)
    assert a.shape == z7.shape and torch.equal(a, b) and torch.isfinite(a).all() and not torch.allclose(a, z7)


def test_max_train_timestep_bounds_the_noise_levels_trained_and_the_strengths_allowed(tmp_path: Path) -> None:
    """With max_train_timestep 20 (of 50) every timestep the UNet is trained on is below 20, and the draws differ
    from full-range training; a pushforward whose first img2img timestep is >= 20 is refused in one line naming
    the fix, one that starts below it is accepted; the limit cannot exceed num_train_timesteps."""
    seen: list[int] = []
    cfg = TINY.model_copy(update={"epochs": 2, "max_train_timestep": 20})
    unet = build_unet(cfg, 2, 7, 3)
    hook = unet.register_forward_pre_hook(lambda m, args: seen.extend(args[1].tolist()))
    train_denoiser(unet, _latents(), cfg)
    hook.remove()
    assert len(seen) == 36 and max(seen) < 20 and len(set(seen)) > 5
    full: list[int] = []
    unet = build_unet(TINY, 2, 7, 3)
    unet.register_forward_pre_hook(lambda m, args: full.extend(args[1].tolist()))
    train_denoiser(unet, _latents(), TINY.model_copy(update={"epochs": 2}))
    assert max(full) >= 20
    vae = build_vae(VAE_CFG, 1, 16).eval()
    save_denoiser(tmp_path / "d", build_unet(cfg, 2, 4, 3), build_scheduler(cfg))
    for strength, ok in ((0.3, True), (0.5, False)):  # 10 DDIM steps of 50: first t 10 at 0.3, 20 at 0.5
        pf = load_pushforward(PushforwardConfig(path=str(tmp_path / "d"), strength=strength, steps=10), vae)
        if ok:
            check_trained_range(pf, 20, where="ddoq")
        else:
            with pytest.raises(ConfigError, match=r"^ddoq.pushforward.strength 0.5 starts img2img at t = 20, but "
                                                  r"the denoiser was trained on t < 20 only; lower the strength"):
                check_trained_range(pf, 20, where="ddoq")
    with pytest.raises(ValueError, match="max_train_timestep must be at most num_train_timesteps"):
        DenoiserConfig(num_train_timesteps=50, max_train_timestep=51)


@pytest.mark.parametrize("how", ["missing", "no-unet-config", "truncated-weights"])
def test_missing_or_corrupt_denoiser_folder_is_one_weights_error_line(tmp_path: Path, how: str) -> None:
    """A missing folder, a deleted unet/config.json or truncated UNet weights raise one single-line WeightsError
    naming the folder and the fix (train it again with the train_denoiser stage)."""
    folder = tmp_path / "denoiser"
    if how != "missing":
        save_denoiser(folder, build_unet(TINY, 2, 4, 3), build_scheduler(TINY))
    if how == "no-unet-config":
        (folder / "unet" / "config.json").unlink()
    if how == "truncated-weights":
        w = folder / "unet" / "diffusion_pytorch_model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(WeightsError) as info:
        load_denoiser(folder)
    msg = str(info.value)
    assert "\n" not in msg and str(folder) in msg and "train_denoiser" in msg


def _run_cfg(methods: dict) -> RunConfig:
    return RunConfig.from_mapping({"name": "p", "ipcs": [1], "evaluation": {"num_eval": 1, "epochs": 1, "width": 8},
                                   "data": {"source": {"kind": "fashion_mnist", "root": "/nowhere"}},
                                   "methods": methods})


def test_plan_has_train_denoiser_only_when_a_method_sets_pushforward(tmp_path: Path) -> None:
    """ddoq with pushforward: a flow node train_denoiser fed by encode_latents and feeding distill/ddoq/ipc1 (not
    d4m without it), shown by `ddflow plan`; without pushforward there is no such node."""
    assert STAGES.index("train_denoiser") == STAGES.index("encode_latents") + 1
    plan = build_plan(_run_cfg({"ddoq": {"pushforward": {"strength": 0.5, "steps": 4}}, "d4m": {}}), num_classes=10)
    node = plan.node("train_denoiser")
    assert node.stage == "train_denoiser" and node.placement == "flow" and node.inputs == {"latents": "encode_latents"}
    assert plan.ids.index("encode_latents") < plan.ids.index("train_denoiser") < plan.ids.index("distill/ddoq/ipc1")
    assert plan.node("distill/ddoq/ipc1").inputs == {"dataset": "ingest", "latents": "encode_latents",
                                                     "vae": "train_vae", "denoiser": "train_denoiser"}
    assert "denoiser" not in plan.node("distill/d4m/ipc1").inputs
    assert plan.node("distill/ddoq/ipc1").config.pushforward.steps == 4  # type: ignore[attr-defined]
    states = node_states(plan, ArtifactStore(tmp_path / "store"))
    assert [s.state for s in states if s.stage == "train_denoiser"] == ["to compute"]
    assert 'train_denoiser<br/><i>to compute</i>' in to_mermaid(states)
    plain = build_plan(_run_cfg({"ddoq": {}, "d4m": {}}), num_classes=10)
    assert "train_denoiser" not in plain.ids and "denoiser" not in plain.node("distill/ddoq/ipc1").inputs


@pytest.mark.parametrize("where", ["local", "object store"])
def test_vae_latents_denoiser_and_ddoq_pushforward_through_run_stage(fake_fmnist: Path, tmp_path: Path,
                                                                     where: str) -> None:
    """ingest -> train_vae -> encode_latents -> train_denoiser (1 epoch, 7x7 latents padded to 8x8) -> distill
    DDOQ with pushforward at IPC 1, each through run_stage: finite images in [0, 1], the pushforward's settings,
    seed and denoiser digest in extra; strength 0 gives the plain decoded set. The same chain runs on a store
    under an fsspec URL (``memory://`` standing in for S3): the model folders diffusers writes and reads locally
    are uploaded to and read back from the store."""
    if where == "local":
        store = ArtifactStore(tmp_path / "store")
    else:
        import fsspec

        store = ArtifactStore(f"memory://den-{tmp_path.name}")
        request_cleanup = fsspec.filesystem("memory")
    try:
        _latent_chain(store, fake_fmnist)
    finally:
        if where != "local" and request_cleanup.exists(f"/den-{tmp_path.name}"):
            request_cleanup.rm(f"/den-{tmp_path.name}", recursive=True)


def _latent_chain(store: ArtifactStore, fake_fmnist: Path) -> None:
    ingest_cfg = IngestConfig.from_mapping({"source": {"kind": "fashion_mnist", "root": str(fake_fmnist)},
                                            "shard_size": 64})
    data = run_stage(store, "ingest", ingest_stage, {}, ingest_cfg, "dataset", device="cpu")
    vae = run_stage(store, "train_vae", train_vae_stage, {"dataset": data}, VAE_CFG, "vae", device="cpu")
    seen: list[tuple[str, int, int, str]] = []  # every long stage reports progress: (label, done, total, text)
    progress.set_display(lambda label, done, total, text: seen.append((label, done, total, text)))
    try:
        lat = run_stage(store, "encode_latents", encode_stage, {"dataset": data, "vae": vae},
                        EncodeConfig(batch_size=64), "latents", device="cpu")
        plain = run_stage(store, "distill", distill_stage, {"dataset": data, "latents": lat, "vae": vae},
                          DDOQConfig(ipc=1, seed=3), "synthetic", device="cpu")
    finally:
        progress.set_display(None)
    encoded = [s for s in seen if s[0] == "encode_latents"]
    assert encoded[-1][1:3] == (120, 120) and "images" in encoded[-1][3]
    classes = [s[1] for s in seen if s[0] == "distill"]
    assert classes == list(range(1, 11)) and "quantization_error" in next(s[3] for s in seen if s[0] == "distill")
    assert plain.kind == "synthetic"
    stage = get_stage("train_denoiser")
    den_cfg = TINY.model_copy(update={"epochs": 1, "batch_size": 40})
    den = run_stage(store, stage.name, stage.fn, {"latents": lat}, den_cfg, stage.kind, device="cpu")
    rec = store.read_record("train_denoiser", den.key)
    assert den.kind == "model" and rec is not None and rec.metrics["n_train"] == 120 and rec.metrics["epochs"] == 1
    assert read_training_record(den.uri)["latents_digest"] == open_latents(lat.uri).digest  # type: ignore[index]
    cfg = DDOQConfig(ipc=1, seed=3, pushforward={"strength": 0.6, "steps": 3, "guidance": 2.0})  # type: ignore[arg-type]
    ref = run_stage(store, "distill", distill_stage, {"dataset": data, "latents": lat, "vae": vae, "denoiser": den},
                    cfg, "synthetic", device="cpu")
    sset = load_synthetic(ref.uri)
    pix = sset.pixels()
    assert sset.images.shape == (10, 1, 28, 28) and torch.isfinite(pix).all()
    assert pix.min() >= -1e-5 and pix.max() <= 1 + 1e-5
    pf = sset.extra["pushforward"]
    assert (pf["strength"], pf["steps"], pf["guidance"], pf["seed"]) == (0.6, 3, 2.0, 3)
    assert pf["scheduler"] == "DDIMScheduler" and pf["class_conditional"] and sset.seeds["pushforward"] == 3
    art = open_artifact(data.uri)
    zero = cfg.model_copy(update={"pushforward": cfg.pushforward.model_copy(update={"strength": 0.0})})
    a = distill_from_latents(art, lat.uri, vae.uri, zero, denoiser_dir=den.uri)
    b = distill_from_latents(art, lat.uri, vae.uri, cfg.model_copy(update={"pushforward": None}))
    assert torch.equal(a.images, b.images) and a.extra["pushforward"]["denoiser_digest"] == pf["denoiser_digest"]
    with pytest.raises(DDFlowError, match="needs a denoiser folder"):
        distill_from_latents(art, lat.uri, vae.uri, cfg)
