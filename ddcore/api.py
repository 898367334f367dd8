"""ddflow from Python: load a dataset, distil it with any registered method, score it against random real subsets,
save and export it (walk-through: docs/api.md; scripts: examples/).

Glue over the ddcore functions the pipeline stages call (the method registry and its typed configs,
``ArtifactSampler``, ``evaluate_set``, ``paired_scores``, ``save_synthetic``, ``export_artifact``), so a set made
here with the same config and seed is the ``distill`` stage's set. Nothing is cached or tracked. Every random draw
follows a ``seed`` argument or a config's seed. Images are float32 ``[N, C, H, W]`` in the dataset's normalised
space ``(pixel - mean) / std``; labels int64 ``[N]``; accuracies fractions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from ddcore.config import StageConfig
from ddcore.data import storage as fsio
from ddcore.data.artifact import DatasetArtifact, open_artifact
from ddcore.data.export import FORMATS, ExportResult, export_artifact
from ddcore.data.ingestion import IngestConfig, ingest
from ddcore.data.loader import ArtifactSampler
from ddcore.data.meta import METADATA
from ddcore.data.sources.idx import FILES
from ddcore.data.synthetic_io import load_synthetic, save_synthetic
from ddcore.data.writer import DEFAULT_SHARD_SIZE
from ddcore.errors import ConfigError, DataError
from ddcore.evaluate.protocol import EvalConfig
from ddcore.evaluate.suite import BASELINE_SEED, BaselineComparison, evaluate_with_baseline
from ddcore.methods import LogFn, MethodInputs, get_method, method_names, method_of
from ddcore.synthetic import SyntheticSet

__all__ = ["FORMATS", "EvalConfig", "Evaluation", "LatentFolders", "distill", "evaluate", "export", "load_dataset",
           "load_set", "method_config", "method_names", "prepare_latents", "save_set"]

C = TypeVar("C", bound=StageConfig)
FASHION_MNIST_NAMES = ("fashion-mnist", "fashion_mnist", "fmnist")
load_set = load_synthetic
"""``load_set(path) -> SyntheticSet``: a saved set read back (bit-exact float images, weights, soft labels)."""


def _typed(kind: type[C], value: C | Mapping[str, Any] | None, where: str) -> C:
    """``value`` as a ``kind`` config: a config is used as is, a mapping validated (one-line ConfigError)."""
    if isinstance(value, kind):
        return value
    return kind.from_mapping(dict(value or {}), where=where)


def load_dataset(data: str | Path | Mapping[str, Any], *, out: str | Path | None = None,
                 max_per_class: int | None = None, shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False,
                 verify: str = "quick") -> DatasetArtifact:
    """A dataset artifact to distil from: opened if ``data`` is one, else ingested from a source into ``out``.

    Args:
        data: an artifact folder (local path or fsspec URL); ``"fashion-mnist"`` or a local folder of the four
            Fashion-MNIST IDX files; or a ``data.source`` mapping (``{"kind": "npz", "path": "d.npz"}``; every kind:
            docs/config.md#datasource).
        out: where a source is ingested (required for a source). max_per_class: at most this many images per class
            and split (first in source order). shard_size, overwrite: as ``ddflow ingest``.
        verify: check level when opening (``none``, ``quick``, ``full``).

    Returns:
        The verified artifact: ``.meta`` (classes, ``image_shape`` ``(C, H, W)``, ``mean``/``std``, ``counts``),
        ``.digest``, ``.load_split(split)`` -> float32 ``[N, C, H, W]`` normalised images, int64 ``[N]`` labels.
    Raises DataError (``data`` is no recognised artifact or source) or ConfigError (bad mapping, no ``out``).
    """
    if isinstance(data, str | Path):
        text = str(data)
        fs, path = fsio.get_fs(text)
        if fs.exists(fsio.join(path, METADATA)):
            return open_artifact(text, verify=verify)
        folder = Path(text).expanduser()
        if text.lower() in FASHION_MNIST_NAMES:
            data = {"kind": "fashion_mnist"}
        elif folder.is_dir() and any((folder / f"{FILES['train'][0]}{ext}").is_file() for ext in (".gz", "")):
            data = {"kind": "fashion_mnist", "root": str(folder)}
        else:
            raise DataError(f"{text} is not a dataset artifact; pass an artifact folder, 'fashion-mnist', a folder of "
                            "Fashion-MNIST IDX files or a source mapping (docs/config.md#datasource)")
    if out is None:
        raise ConfigError("load_dataset: a source is ingested into a folder; pass out=DIR")
    cfg = IngestConfig.from_mapping({"source": dict(data), "shard_size": shard_size, "max_per_class": max_per_class},
                                    where="load_dataset")
    ingest(cfg.pinned(), out, overwrite=overwrite)
    return open_artifact(out, verify=verify)


def method_config(method: str, *, ipc: int, seed: int = 0, **fields: Any) -> StageConfig:
    """The typed config of registered ``method`` at ``ipc`` with ``seed``, as the run config's
    ``methods: {<method>: {...fields}}`` entry is validated (every field: docs/config.md#methods).

    Returns ``DistillConfig`` (dm, hdd, ncfm), ``BaselineConfig`` (random, herding) or ``DDOQConfig`` (ddoq, d4m);
    raises ConfigError (one line) for an unknown method, an unknown field or a bad value.
    """
    return get_method(method).config(fields, ipc=ipc, seed=seed, where=f"methods.{method}")


@dataclass(frozen=True)
class LatentFolders:
    """What DDOQ/D4M read besides the dataset (:func:`prepare_latents`): the autoencoder folder (``vae``), the
    train split's latent artifact it encoded (``latents``), the img2img ``denoiser`` folder (``pushforward`` only)."""

    vae: Path
    latents: Path
    denoiser: Path | None = None

    def inputs(self) -> dict[str, str]:
        """The folders by the input names the registry uses (``vae``, ``latents``, ``denoiser``)."""
        return {k: str(v) for k, v in vars(self).items() if v is not None}


def prepare_latents(data: DatasetArtifact, folder: str | Path, *, vae: Any = None, denoiser: Any = None,
                    device: str = "cpu", batch_size: int = 256, dtype: str = "float32",
                    log: LogFn | None = None) -> LatentFolders:
    """The autoencoder and the train split's latents DDOQ/D4M quantize, written under ``folder``.

    Args:
        folder: gets ``vae/``, ``latents/`` and, with ``denoiser``, ``denoiser/`` (each replaced when present).
        vae: a ``VAEConfig`` or its mapping (docs/config.md#vae); default ``{"source": "identity"}``: the pixels are
            the latents, nothing trained. ``{"source": "train", ...}`` trains the small ``AutoencoderKL`` on the
            whole train split (seed ``vae.seed``); ``{"source": "pretrained", "pretrained_path": DIR}`` uses DIR.
        denoiser: a ``DenoiserConfig`` or mapping (docs/config.md#denoiser): also train the img2img denoiser on the
            latents (for a DDOQ/D4M ``pushforward``). device, batch_size, dtype: the encoding (``encode`` section).
        log: ``(epoch, {"loss", "recon", "kl"})`` after each VAE training epoch.

    Raises ConfigError for a bad config or ``vae.max_train_per_class`` (only the ``train_vae`` stage subsets).
    """
    from ddcore.latent.denoiser import DenoiserConfig, fit_denoiser
    from ddcore.latent.folders import folder_digest
    from ddcore.latent.reader import open_latents
    from ddcore.latent.shards import encode_dataset
    from ddcore.latent.vae import VAEConfig, build_vae, load_pretrained_vae, save_vae, train_vae

    vcfg = _typed(VAEConfig, vae if vae is not None else {"source": "identity"}, "vae")
    if vcfg.max_train_per_class is not None:
        raise ConfigError("vae.max_train_per_class is not supported by prepare_latents; remove it (train on every "
                          "image) or run the pipeline's train_vae stage")
    root = Path(folder)
    if vcfg.source == "pretrained":
        vae_dir = Path(str(vcfg.pretrained_path)).expanduser()
        model, digest = load_pretrained_vae(vae_dir), folder_digest(vae_dir)
    else:
        c, h, w = data.meta.image_shape
        model, vae_dir = build_vae(vcfg, c, (h, w)).to(device), root / "vae"
        if vcfg.source == "train":
            train_vae(model, ArtifactSampler(data, "train"), vcfg, progress=log)
        digest = save_vae(model, vae_dir)
    lat_dir = root / "latents"
    encode_dataset(data, model.to(device).eval(), lat_dir, batch_size=batch_size, dtype=dtype, vae_digest=digest,
                   overwrite=True)
    den_dir = None
    if denoiser is not None:
        den_dir = root / "denoiser"
        fit_denoiser(open_latents(lat_dir), _typed(DenoiserConfig, denoiser, "denoiser"), den_dir, device=device)
    return LatentFolders(vae=vae_dir, latents=lat_dir, denoiser=den_dir)


def distill(data: DatasetArtifact, method: str | StageConfig, *, ipc: int = 10, seed: int = 0,
            latents: LatentFolders | None = None, device: str = "cpu", checkpoint_dir: str | Path | None = None,
            log: LogFn | None = None, **fields: Any) -> SyntheticSet:
    """Distil (or select) a set from ``data``'s train split with a registered method.

    Args:
        method: a registered name (:func:`method_names`: dm, hdd, ncfm, random, herding, ddoq, d4m) whose config
            is built from ``ipc``, ``seed`` and ``fields`` (:func:`method_config`), or a ready config.
        latents: the folders of :func:`prepare_latents` (ddoq, d4m). device: where networks and images live.
        checkpoint_dir: resumable state is saved there (every ``checkpoint_every`` iterations) and resumed from.
        log: ``(iteration, {"loss": ...})`` progress callback.

    Returns ``images`` float32 ``[N, C, H, W]`` normalised, ``labels`` int64 ``[N]`` (class-major), optional
    ``weights`` float32 ``[N]`` (DDOQ cell masses), the ``config`` and ``seeds`` that made it, ``extra`` facts.
    Raises ConfigError for an unknown method or field, fields beside a ready config, or missing latent folders.
    """
    if isinstance(method, StageConfig):
        if fields:
            raise ConfigError(f"distill: fields {sorted(fields)} given beside a ready config; set them in the config")
        cfg = method
    else:
        cfg = method_config(method, ipc=ipc, seed=seed, **fields)
    spec = method_of(cfg)
    given = latents.inputs() if latents is not None else {}
    missing = sorted(spec.needs_for(cfg) - set(given))
    if missing:
        how = ", denoiser=..." if "denoiser" in missing else ""
        raise ConfigError(f"{spec.name} needs {', '.join(missing)}; pass latents=prepare_latents(data, DIR{how})")
    inputs = MethodInputs(ArtifactSampler(data, "train"), data, device,
                          checkpoint_dir, log,
                          **{need: given[need] for need in spec.needs_for(cfg)})
    sset = spec.run(inputs, cfg)
    sset.extra.setdefault("dataset_digest", data.digest)
    return sset


Evaluation = BaselineComparison
"""What :func:`evaluate` returns: ``synthetic`` and ``random`` (``EvalSummary``: ``accs``, network ``seeds``, ``mean``,
``std``, ``protocol``, ``runs``), ``random_seeds`` (subset i drawn from ``baseline_seed + i``), ``baseline_ipc`` (the
set's storage budget), ``scores`` (``PairedScores``: IOR per round paired by network seed, mean and std; HLR/LRS
with a full-data accuracy)."""


def evaluate(sset: SyntheticSet, data: DatasetArtifact, *, config: EvalConfig | Mapping[str, Any] | None = None,
             baseline_seed: int = BASELINE_SEED, device: str = "cpu", use_weights: bool = True,
             use_soft_labels: bool = True, teacher: nn.Module | None = None, full_data_acc: float | None = None,
             split: str | None = None, progress: Callable[[int, int, float], None] | None = None) -> Evaluation:
    """Train ``config.num_eval`` fresh networks on ``sset`` and as many on random real subsets, test them on the
    held-out split and score the set against the subsets, as the evaluation, baseline and report stages do
    (:func:`ddcore.evaluate.suite.evaluate_with_baseline` on the dataset's train and test splits).

    Args:
        sset: the set, in ``data``'s normalisation. data: the dataset it was made from (the baseline's train split).
        config: an ``EvalConfig`` or its mapping (docs/config.md#evaluation); default the DM protocol (1000 epochs,
            5 networks); ``EvalConfig.dm_protocol(epochs=2, num_eval=2, width=16)`` is a quick one.
        baseline_seed: subset i is drawn from ``baseline_seed + i`` (default: the pipeline's).
        use_weights, use_soft_labels: train on the set's per-image weights / soft labels when it has them.
        teacher: a soft-label teacher network (``ddcore.evaluate.teacher``) for the set and the baseline.
        full_data_acc: the recipe's accuracy on the full train split, for HLR and LRS (hard-label sets).
        split: the split tested on (default ``test``, else ``val``). progress: ``(pass, passes, loss)``.

    Raises DataError when there is no held-out split or the set does not fit the dataset (classes, shape,
    normalisation), ConfigError for a bad recipe or a ``full_data_acc`` that is not a fraction.
    """
    cfg = _typed(EvalConfig, config, "evaluation")
    split = split or next((s for s in ("test", "val") if s in data.meta.counts), None)
    if split is None:
        raise DataError(f"dataset {data.uri} has no test or val split; ingest one (e.g. test_fraction: 0.1)")
    test_x, test_y = data.load_split(split)
    return evaluate_with_baseline(sset, ArtifactSampler(data, "train"), test_x, test_y, config=cfg,
                                  random_seed=baseline_seed, full_data_acc=full_data_acc, use_weights=use_weights,
                                  use_soft_labels=use_soft_labels, teacher=teacher, device=device, progress=progress)


def save_set(sset: SyntheticSet, data: DatasetArtifact, out: str | Path, *, name: str | None = None,
             overwrite: bool = False) -> DatasetArtifact:
    """Write ``sset`` as a dataset artifact at ``out`` as the ``distill`` stage does (atomic; float32 images
    bit-exact, PNG previews, weights, soft labels; method, config, seeds in ``dataset.json``); return it opened.
    ``ddflow info/show/evaluate/export`` and :func:`load_set` read it. ``name``: ``<dataset>-<method>-ipc<IPC>``.

    Raises DataError (class counts differ), ArtifactError (``out`` exists, unless ``overwrite``) or
    DistillationError (NaN/Inf images).
    """
    if sset.num_classes != data.meta.num_classes:
        raise DataError(f"the set has {sset.num_classes} classes but {data.uri} has {data.meta.num_classes}; "
                        "pass the dataset the set was made from")
    source = {"name": name or f"{data.meta.name}-{sset.method}-ipc{sset.ipc}", "kind": "api", "dataset": data.uri,
              "dataset_digest": data.digest}
    save_synthetic(sset, out, classes=list(data.meta.classes), source=source, overwrite=overwrite)
    return open_artifact(out)


def export(artifact: DatasetArtifact | str | Path, fmt: str, out: str | Path, *, split: str | None = None,
           overwrite: bool = False) -> ExportResult:
    """Export a dataset artifact (a saved set or any dataset) as ``fmt`` (:data:`FORMATS`: ``png``, ``imagefolder``,
    ``pt``, ``hf``) into the folder ``out`` as ``ddflow export`` does (layouts: README, "Export"); returns its
    ``ExportResult`` (``out``, ``fmt``, ``counts`` per split, ``notes``).
    Raises ConfigError (unknown format) or ExportError (``out`` not empty, unless ``overwrite``; ``hf`` without
    the ``datasets`` package).
    """
    uri = artifact.uri if isinstance(artifact, DatasetArtifact) else artifact
    return export_artifact(uri, fmt, out, split=split, overwrite=overwrite)
