"""Stages ``train_vae`` and ``encode_latents``, and the DDOQ/D4M branch of ``distill``.

``train_vae`` trains a small diffusers AutoencoderKL on the dataset (or loads a local pretrained
folder) and saves it with ``save_pretrained``; ``encode_latents`` writes per-sample latents as shards
keyed like the source manifest, resumable per shard; DDOQ/D4M quantise each class's latents and
decode the centroids into a weighted synthetic set.
"""

from __future__ import annotations

import time

from ddcore.latent.ddoq import DDOQConfig
from ddcore.latent.stage import ddoq_stage, encode_latents_stage, train_or_load_vae
from ddcore.latent.vae import VAEConfig
from tasks.configs import EncodeConfig
from tasks.runtime.refs import ArtifactRef
from tasks.runtime.stage import StageContext, make_stage_task


def train_vae_stage(inputs: dict[str, ArtifactRef], config: VAEConfig, out: str, ctx: StageContext) -> dict:
    t0 = time.perf_counter()
    _, digest = train_or_load_vae(inputs["dataset"].uri, config, out, checkpoint_dir=ctx.local_checkpoint_dir,
                                  device=ctx.device, log=lambda step, m: ctx.log_metrics(step, m))
    return {"seconds": time.perf_counter() - t0, "vae_digest": digest}


def encode_stage(inputs: dict[str, ArtifactRef], config: EncodeConfig, out: str, ctx: StageContext) -> dict:
    return encode_latents_stage(inputs["dataset"].uri, inputs["vae"].uri, out, batch_size=config.batch_size,
                                dtype=config.dtype, device=ctx.device, checkpoint_dir=ctx.checkpoint_dir)


def ddoq_from_inputs(inputs: dict[str, ArtifactRef], config: DDOQConfig, out: str, ctx: StageContext,
                     t0: float) -> dict:
    """The ``distill`` stage for DDOQ/D4M: needs ``dataset``, ``latents`` and ``vae`` inputs."""
    metrics = ddoq_stage(inputs["dataset"].uri, inputs["latents"].uri, inputs["vae"].uri, config, out,
                         device=ctx.device)
    return {"seconds": time.perf_counter() - t0, **{k: v for k, v in metrics.items() if k != "seconds"}}


TRAIN_VAE = make_stage_task("train_vae", train_vae_stage, "vae", retries=1, tags=("gpu",))
ENCODE_LATENTS = make_stage_task("encode_latents", encode_stage, "latents", retries=2, tags=("gpu",))
