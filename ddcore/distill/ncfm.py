"""One optimisation step of NCFM (docs/methods.md §4): min-max characteristic-function matching.

Synthetic images are optimised in pixel space ``[0, 1]`` with AdamW and clamped after each step.
With ``factor = 2`` each stored image is a 2x2 mosaic decoded into four full-size images before
matching (multi-formation). Per iteration the feature net is either a fresh random ConvNet or, with
a pretrained pool, a blend ``l·θ_init + (1-l)·θ_final`` of a random pool member (l ~ U(0, 1)). Real and
synthetic batches of a class share one IDC augmentation draw (color, crop, cutout). Frequencies are
``N(0, I)`` or come from the sampling net ψ, which ascends the same loss. With a pool, a CE
calibration step on the final model follows (weight ``calibration_weight``).

``class_chunk`` splits the classes into several forward passes; the loss is a sum over classes, so the
accumulated gradients (images and ψ) are those of the single pass.

Differences from the released code, kept deliberately: one image step per iteration for all classes
(the reference steps per class); one frequency draw ``t`` per iteration shared by every class (the
reference draws per loss call, i.e. per class); no ReduceLROnPlateau on the image optimiser.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ddcore.augment.dsa import IDC_STRATEGY, DSAParams, apply, draw_sequence, parse_strategy
from ddcore.checkpoint import checkpoint_file
from ddcore.distill.batches import siamese_batches
from ddcore.distill.config import DistillConfig, distilled_classes
from ddcore.distill.init import decode_factor
from ddcore.distill.losses import ncfm_loss_batched
from ddcore.distill.matching import class_chunks
from ddcore.distill.pool import FeaturePool, train_pool
from ddcore.distill.sampling_net import FrequencySampler, build_psi_optimizer, gaussian_frequencies, psi_step
from ddcore.nets.fast import fast_embed, prepare
from ddcore.nets.registry import reinit_
from ddcore.sampling import RealSampler
from ddcore.seeding import IterationRng, draw_seed


class NCFMStep:
    """Callable step ``(syn_pixels, labels, optimizer, rng) -> metrics`` for NCFM (``cfg.classes`` only).

    The frequencies, the feature net and the calibration draw come from ``rng.shared``; each class's
    real batch and augmentation from ``rng.for_class(c)``. Without ψ and calibration a class group
    distilled alone therefore gets the same images as in the full run; ψ (trained against the classes
    it sees) and the CE calibration (a mean over the set) make a class-group run a variant.
    """

    def __init__(self, sampler: RealSampler, cfg: DistillConfig, device: torch.device,
                 pool: FeaturePool | None = None) -> None:
        self.sampler, self.cfg, self.device, self.pool = sampler, cfg, device, pool
        c, h, _ = sampler.image_shape
        self.net = cfg.network_spec.build(channels=c, num_classes=sampler.num_classes, image_size=h,
                                          seed=cfg.seed).to(device)
        prepare(self.net)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.mean = torch.tensor(sampler.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(sampler.std, device=device).view(1, -1, 1, 1)
        o = cfg.ncfm
        self.psi: FrequencySampler | None = None
        self.psi_opt: torch.optim.Optimizer | None = None
        if o.sampling_net:
            self.psi = FrequencySampler(o.num_freqs, self.net.embed_dim, kind=o.sampler_kind,
                                        group=o.sampler_group, seed=cfg.seed).to(device)
            self.psi_opt = build_psi_optimizer(self.psi, lr=o.psi_lr, momentum=o.psi_momentum)
        self.families = parse_strategy(IDC_STRATEGY)

    @classmethod
    def build(cls, sampler: RealSampler, cfg: DistillConfig, device: torch.device,
              checkpoint_dir: str | Path | None = None, pool: FeaturePool | None = None) -> NCFMStep:
        """The step of an NCFM run, with its pretrained pool when ``ncfm.pool.num_models > 0``: ``pool`` when
        given, else the one saved in ``checkpoint_dir`` by an earlier attempt, else trained now (and saved there)."""
        return cls(sampler, cfg, device, _pool(sampler, cfg, device, checkpoint_dir, pool))

    def optimizer(self, syn: torch.Tensor) -> torch.optim.Optimizer:
        """AdamW on the pixel-space images (the NCFM reference optimiser)."""
        return torch.optim.AdamW([syn], lr=self.cfg.lr_img, weight_decay=self.cfg.ncfm.weight_decay)

    def initial(self, images: torch.Tensor) -> torch.Tensor:
        """NCFM optimises pixels in ``[0, 1]``: the normalised initial images mapped back and clamped."""
        m = torch.tensor(self.sampler.mean).view(1, -1, 1, 1)
        s = torch.tensor(self.sampler.std).view(1, -1, 1, 1)
        return (images * s + m).clamp(0, 1)

    def finalize(self, syn: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """The stored set in normalised space; with ``factor`` 2 the mosaics decoded into four images each
        (``extra`` records ``factor`` and the ``stored_ipc`` of mosaics)."""
        images = self.normalise(syn.to(self.mean.device)).cpu()
        if self.cfg.ncfm.factor == 1:
            return images, labels, {}
        images, labels = decode_factor(images, labels, self.cfg.ncfm.factor)
        return images, labels, {"factor": self.cfg.ncfm.factor, "stored_ipc": self.cfg.ipc}

    def seeds(self) -> dict[str, int]:
        return {"distill": self.cfg.seed, "pool": self.cfg.ncfm.pool.seed}

    def state(self) -> dict:
        if self.psi is None:
            return {}
        return {"psi": self.psi.state_dict(), "psi_opt": self.psi_opt.state_dict()}  # type: ignore[union-attr]

    def load_state(self, state: dict) -> None:
        if self.psi is not None and "psi" in state:
            self.psi.load_state_dict(state["psi"])
            self.psi_opt.load_state_dict(state["psi_opt"])  # type: ignore[union-attr]

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std

    def decoded(self, syn: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised training images (mosaics decoded) and their labels."""
        x, y = decode_factor(syn, labels, self.cfg.ncfm.factor)
        return self.normalise(x), y

    def __call__(self, syn: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
                 rng: IterationRng) -> dict[str, float]:
        cfg, o, k = self.cfg, self.cfg.ncfm, self.sampler.num_classes
        generator = rng.shared
        final_model = self._pick_net(generator)
        xs, ys = self.decoded(syn, labels)
        fams = self.families

        def draw(n: int, shape: tuple[int, ...], g: torch.Generator) -> DSAParams:
            return draw_sequence(fams, batch=n, image_shape=shape, generator=g, siamese=True)  # type: ignore[arg-type]

        if self.psi is not None:
            t = self.psi(generator)
        else:
            t = gaussian_frequencies(o.num_freqs, self.net.embed_dim, generator=generator, device=self.device)
        optimizer.zero_grad(set_to_none=True)
        if self.psi_opt is not None:
            self.psi_opt.zero_grad(set_to_none=True)
        chunks = class_chunks(distilled_classes(cfg, k), cfg.class_chunk)
        if len(chunks) == 1:
            loss = self._chunk_loss(chunks[0], xs, ys, t, draw, rng)
            loss.backward()
            total = loss.detach()
        else:  # accumulate d(loss)/d(images, t) per chunk, then one backward through decode and ψ
            xs_leaf, t_leaf = xs.detach().requires_grad_(True), t.detach().requires_grad_(t.requires_grad)
            total = torch.zeros((), device=self.device)
            for chunk in chunks:
                loss = self._chunk_loss(chunk, xs_leaf, ys, t_leaf, draw, rng)
                loss.backward()
                total = total + loss.detach()
            outputs, grads = [xs], [xs_leaf.grad]
            if t_leaf.grad is not None:
                outputs.append(t)
                grads.append(t_leaf.grad)
            torch.autograd.backward(outputs, grads)
        optimizer.step()
        if self.psi_opt is not None:
            psi_step(self.psi_opt)
        metrics = {"loss": float(total)}  # the iteration's one read-back (two with calibration)
        if final_model is not None and o.calibration_weight > 0:
            metrics["calibration"] = self._calibrate(syn, labels, optimizer, final_model, generator)
        with torch.no_grad():
            syn.clamp_(0.0, 1.0)
        return metrics

    def _chunk_loss(self, chunk: list[int], xs: torch.Tensor, ys: torch.Tensor, t: torch.Tensor,
                    draw: Callable[..., DSAParams], rng: IterationRng) -> torch.Tensor:
        """The scaled NCFD summed over the classes of ``chunk`` (real batch and augmentation per class)."""
        o = self.cfg.ncfm
        b = siamese_batches(self.sampler, chunk, xs, ys, batch_real=self.cfg.batch_real, draw=draw,
                            rng=rng, device=self.device)
        with torch.no_grad():
            fr = fast_embed(self.net, b.real)
        fs = fast_embed(self.net, b.syn)
        return ncfm_loss_batched(fr, fs, t, alpha=o.alpha, beta=o.beta, scale=o.scale, real_labels=b.real_labels,
                                 syn_labels=b.syn_labels, num_classes=len(chunk), all_present=True,
                                 normalize=o.normalize)

    def _pick_net(self, generator: torch.Generator) -> torch.nn.Module | None:
        """Re-initialise or blend the feature net for this iteration; returns the pool's final model."""
        if self.pool is None or len(self.pool) == 0:
            reinit_(self.net, draw_seed(generator))
            return None
        m = int(torch.randint(len(self.pool), (1,), generator=generator).item())
        lam = float(torch.rand(1, generator=generator).item())
        self.pool.blend_into(self.net, m, lam)
        return self.pool.final_model(m, self.device)

    def _calibrate(self, syn: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
                   model: torch.nn.Module, generator: torch.Generator) -> float:
        xs, ys = self.decoded(syn, labels)
        params = draw_sequence(self.families, batch=xs.shape[0], image_shape=tuple(xs.shape[1:]),
                               generator=generator, siamese=True)
        target = ys.to(xs.device, non_blocking=True)
        ce = self.cfg.ncfm.calibration_weight * F.cross_entropy(model(apply(xs, params)), target)
        optimizer.zero_grad(set_to_none=True)
        ce.backward()
        optimizer.step()
        return float(ce.detach())


POOL_FILE = "pool.pt"


def _pool(sampler: RealSampler, cfg: DistillConfig, device: torch.device, checkpoint_dir: str | Path | None,
          pool: FeaturePool | None) -> FeaturePool | None:
    o = cfg.ncfm.pool
    if o.num_models == 0 or pool is not None:
        return pool
    cached = checkpoint_file(checkpoint_dir, POOL_FILE)
    if cached is not None and (saved := FeaturePool.saved(cached)) is not None:
        return saved
    made = train_pool(sampler, num_models=o.num_models, epochs=o.epochs, lr=o.lr, batch_size=o.batch_size,
                      seed=o.seed, network=cfg.network, width=cfg.width, depth=cfg.depth, device=device)
    if cached is not None:
        made.save(cached)
    return made
