"""The distillation driver shared by DM, HDD and NCFM: init, steps, checkpoints, NaN guard, output.

Every random draw of iteration ``i`` comes from :class:`~ddcore.seeding.IterationRng`
``(seed, i)`` (a shared stream and one per class), so a run resumed from a checkpoint is bit-for-bit
the uninterrupted run on CPU, and ``cfg.classes`` distils one class group of a fanned-out run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from ddcore.checkpoint import load_state, loop_checkpoint, save_state
from ddcore.distill.config import DistillConfig, distilled_classes
from ddcore.distill.init import initial_images
from ddcore.distill.matching import MatchingStep
from ddcore.distill.ncfm import NCFMStep
from ddcore.distill.pool import FeaturePool
from ddcore.errors import DistillationError
from ddcore.sampling import RealSampler, on_device
from ddcore.seeding import ITERATION_SCHEME, IterationRng
from ddcore.synthetic import SyntheticSet

_LOG = logging.getLogger(__name__)

LogFn = Callable[[int, dict[str, float]], None]


class DistillStep(Protocol):
    """What the loop drives: one method's optimisation step and what surrounds it.

    ``build`` makes the step (with whatever it needs besides the sampler, e.g. NCFM's pretrained pool);
    ``initial`` maps the initial normalised images to the space the method optimises; ``optimizer`` makes
    the image optimiser; ``__call__`` runs one iteration and returns its metrics (``loss`` at least);
    ``finalize`` turns the optimised tensor into the stored images, labels and extra manifest fields;
    ``seeds`` names the seeds the set records; ``state`` / ``load_state`` carry what a checkpoint keeps.
    """

    @classmethod
    def build(cls, sampler: RealSampler, cfg: DistillConfig, device: torch.device,
              checkpoint_dir: str | Path | None = None, pool: FeaturePool | None = None) -> DistillStep: ...
    def initial(self, images: torch.Tensor) -> torch.Tensor: ...
    def optimizer(self, syn: torch.Tensor) -> torch.optim.Optimizer: ...
    def __call__(self, syn: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
                 rng: IterationRng) -> dict[str, float]: ...
    def finalize(self, syn: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]: ...
    def seeds(self) -> dict[str, int]: ...
    def state(self) -> dict: ...
    def load_state(self, state: dict) -> None: ...


#: The step class of each gradient-based method (``DistillConfig.method``).
STEPS: dict[str, type[DistillStep]] = {"dm": MatchingStep, "hdd": MatchingStep, "ncfm": NCFMStep}  # type: ignore[dict-item]


def distill(sampler: RealSampler, cfg: DistillConfig, *, device: str | torch.device = "cpu",
            checkpoint_dir: str | Path | None = None, log: LogFn | None = None, stop_after: int | None = None,
            pool: FeaturePool | None = None) -> SyntheticSet:
    """Run ``cfg.method`` against ``sampler`` and return the synthetic set.

    Args:
        sampler: real images (the full set or a pruned core set).
        cfg: method config; ``cfg.seed`` determines every random draw.
        device: torch device for networks and images.
        checkpoint_dir: where loop state is saved every ``cfg.checkpoint_every`` iterations and
            resumed from; ``None`` disables checkpointing.
        log: called with ``(iteration, metrics)`` every ``cfg.log_every`` iterations, and once with
            ``(start, {"resumed_from": start})`` when the run resumes from a checkpoint at iteration ``start``.
        stop_after: stop (after checkpointing) once this many iterations are done; for tests of resume.
        pool: a pretrained NCFM feature pool (trained here when configured and not given).

    Raises:
        DistillationError: the loss or the images became NaN/Inf (names the iteration and the last
            good checkpoint).
    """
    dev = torch.device(device)
    classes = distilled_classes(cfg, sampler.num_classes)
    labels = torch.tensor(classes, dtype=torch.int64).repeat_interleave(cfg.ipc)
    images = initial_images(sampler, ipc=cfg.ipc, init=cfg.init, seed=cfg.seed, classes=classes)
    step = STEPS[cfg.method].build(on_device(sampler, dev), cfg, dev, checkpoint_dir, pool)  # real draws on dev
    syn = step.initial(images).to(dev).requires_grad_(True)
    opt = step.optimizer(syn)
    start, history = 0, []
    state = load_state(loop_checkpoint(checkpoint_dir))
    if state is not None and state.get("config_digest") != cfg.digest():
        _LOG.warning("checkpoint in %s was written by another config (digest %s, this run %s); starting from "
                     "iteration 0 and overwriting it", checkpoint_dir, str(state.get("config_digest"))[:12],
                     cfg.digest()[:12])
        state = None
    if state is not None:
        with torch.no_grad():
            syn.copy_(state["images"].to(dev))
        opt.load_state_dict(state["optimizer"])
        step.load_state(state.get("step", {}))
        start, history = int(state["iteration"]), list(state.get("history", []))
        _LOG.info("resuming from the checkpoint in %s at iteration %d", checkpoint_dir, start)
        if log is not None:
            log(start, {"resumed_from": float(start)})
    last_good = "none" if checkpoint_dir is None or start == 0 else str(checkpoint_dir)
    for it in range(start, cfg.iterations):
        if stop_after is not None and it >= stop_after:
            break
        metrics = step(syn, labels, opt, IterationRng(cfg.seed, it))  # labels stay on the host (batches.py)
        done = it + 1
        # the loss is read every iteration; the images (a second read-back on a GPU) where they are logged,
        # saved or returned: a non-finite image makes the next iteration's loss non-finite anyway
        saving = bool(checkpoint_dir is not None and cfg.checkpoint_every
                      and (done % cfg.checkpoint_every == 0 or done == stop_after))
        logging = done % cfg.log_every == 0 or done == cfg.iterations
        if not math.isfinite(metrics["loss"]) or ((saving or logging) and not torch.isfinite(syn).all()):
            raise DistillationError(
                f"{cfg.method}: NaN/Inf in the loss or synthetic images at iteration {it}; last good "
                f"checkpoint: {last_good}; lower lr_img and resume"
            )
        if logging:
            history.append([done, metrics["loss"]])
            if log is not None:
                log(done, metrics)
        if saving:
            save_state(loop_checkpoint(checkpoint_dir), {
                "iteration": done, "images": syn.detach().cpu(), "optimizer": opt.state_dict(), "step": step.state(),
                "config_digest": cfg.digest(), "history": history,
                "rng": {"scheme": ITERATION_SCHEME, "seed": cfg.seed}})
            last_good = str(checkpoint_dir)
    return _result(sampler, cfg, step, syn.detach().cpu(), labels, history)


def _result(sampler: RealSampler, cfg: DistillConfig, step: DistillStep, syn: torch.Tensor, labels: torch.Tensor,
            history: list) -> SyntheticSet:
    images, labels, extra = step.finalize(syn, labels)
    return SyntheticSet(images=images.contiguous(), labels=labels, mean=tuple(sampler.mean), std=tuple(sampler.std),
                        num_classes=sampler.num_classes, method=cfg.method, config=cfg.model_dump(mode="json"),
                        seeds=step.seeds(), extra={"loss_history": history, **extra})
