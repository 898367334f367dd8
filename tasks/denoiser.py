"""Stage ``train_denoiser``: the latent diffusion UNet the DDOQ / D4M pushforward (img2img) decodes through.

Input ``latents`` (the ``encode_latents`` artifact of the train split). The stage trains
:func:`ddcore.latent.denoiser.train_denoiser` on those latents with their class labels (resumable per epoch
from the stage's checkpoint folder, losses logged per epoch) and writes the denoiser folder
(``unet/``, ``scheduler/``, ``training.json``) atomically. The plan adds it only when some method config sets
``pushforward``; the ``distill`` stage then gets its output as input ``denoiser``.
"""

from __future__ import annotations

import time

from ddcore.latent.denoiser import DenoiserConfig, fit_denoiser
from ddcore.latent.reader import open_latents
from tasks.runtime.refs import ArtifactRef
from tasks.runtime.stage import StageContext, make_stage_task


def train_denoiser_stage(inputs: dict[str, ArtifactRef], config: DenoiserConfig, out: str,
                         ctx: StageContext) -> dict:
    """Train the denoiser on ``inputs["latents"]`` into ``out``; returns the final loss, counts and digest."""
    t0 = time.perf_counter()
    lat = open_latents(inputs["latents"].uri)
    digest, stats = fit_denoiser(lat, config, out, checkpoint_dir=ctx.checkpoint_dir, device=ctx.device,
                                 progress=lambda epoch, m: (ctx.log_metrics(epoch, m),
                                                            ctx.progress(epoch + 1, config.epochs, "epochs", **m)))
    return {"seconds": time.perf_counter() - t0, "final_loss": stats.epoch_loss[-1] if stats.epoch_loss else 0.0,
            "epochs": len(stats.epoch_loss), "n_train": stats.n_train, "steps": stats.steps,
            "denoiser_digest": digest}


TRAIN_DENOISER = make_stage_task("train_denoiser", train_denoiser_stage, "model", retries=1, tags=("gpu",))
