"""The builders tests/error_cases.py uses to trigger the rows of docs/errors.md: :class:`Case`, minimal run
configs, and damaged datasets, artifacts, folders and environments (no assertions here)."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import sys
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from conftest import class_images
from PIL import Image

from ddcore.data import IngestConfig, ingest
from ddcore.data.codec import encode_png


@dataclass
class Case:
    """One way to hit one catalogue row.

    Attributes:
        args: ``ddflow`` arguments (CLI rows).
        call: an API call raising the error (rows without a CLI entry point).
        flow: the command runs a Prefect flow (needs the test harness; not repeated with --debug).
        env: environment variables set while it runs.
        prepare: run first (e.g. a failing flow run that leaves a checkpoint to corrupt).
        context: a context manager around the invocation (e.g. no Prefect API configured).
        warning: the row is a warning (exit 0) rather than an error.
    """

    args: list[str] | None = None
    call: Callable[[], Any] | None = None
    flow: bool = False
    env: dict[str, str] = field(default_factory=dict)
    prepare: Callable[[], Any] | None = None
    context: Callable[[], Any] | None = None
    warning: bool = False


def run_config(tmp: Path, fmnist: Path, body: str = "methods: {random: {width: 8}}", name: str = "c.yaml",
               source: str | None = None) -> str:
    """A minimal pipeline config (random method, one evaluation round, no baseline, no tracking) + ``body``."""
    path = tmp / name
    path.write_text(f"""
name: cat
ipcs: [2]
data: {{source: {source or f"{{kind: fashion_mnist, root: {fmnist}}}"}, shard_size: 50}}
random_baseline: false
evaluation: {{epochs: 1, width: 8, num_eval: 1}}
tracking: {{enabled: false}}
{body}
""")
    return str(path)


def _run(tmp: Path, fmnist: Path, body: str, source: str | None = None, **kw: Any) -> Case:
    return Case(args=["run", run_config(tmp, fmnist, body, source=source), "--root", str(tmp / "root")], flow=True,
                **kw)


def _npz_run(tmp: Path, fmnist: Path, classes: str) -> Case:
    return _run(tmp, fmnist, "methods: {random: {}}", source=f"{{kind: npz, path: {_npz(tmp)}, classes: {classes}}}")


def _yaml(tmp: Path, text: str) -> str:
    (tmp / "c.yaml").write_text(text)
    return str(tmp / "c.yaml")


def _npz(tmp: Path, **arrays: Any) -> str:
    x, y = class_images(3, 3, shape=(8, 8), seed=0)
    arrays = {"x": x, "y": y, **arrays}
    np.savez(tmp / "d.npz", **{k: v for k, v in arrays.items() if v is not None})
    return str(tmp / "d.npz")


def _folder(tmp: Path, shapes: dict[str, list[tuple[int, int]]]) -> str:
    for cls, sizes in shapes.items():
        (tmp / "imgs" / cls).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            Image.fromarray(np.zeros((h, w), np.uint8)).save(tmp / "imgs" / cls / f"{i}.png")
    return str(tmp / "imgs")


def _shards(tmp: Path, **extra: bytes) -> Path:
    x, y = class_images(20, 2, shape=(8, 8, 3), seed=0)
    (tmp / "src").mkdir(exist_ok=True)
    with wds.TarWriter(str(tmp / "src" / "s.tar"), encoder=False) as w:
        for i in range(len(y)):
            w.write({"__key__": f"k{i:04d}", "png": encode_png(x[i]), "cls": str(int(y[i])).encode(), **extra})
    return tmp / "src" / "s.tar"


def _artifact(tmp: Path) -> Path:
    ingest(IngestConfig.from_mapping({"source": {"kind": "npz", "path": _npz(tmp)}}), tmp / "art")
    return tmp / "art"


def _damaged(tmp: Path, damage: Callable[[Path], Any], *extra: str) -> Case:
    art = _artifact(tmp)
    damage(art)
    return Case(args=["info", str(art), *extra])


def _set_meta(art: Path, **changes: Any) -> None:
    meta = json.loads((art / "dataset.json").read_text())
    meta.update(changes)
    (art / "dataset.json").write_text(json.dumps(meta))


def _flip_byte(art: Path) -> None:
    shard = art / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))


def _load_teacher(folder: Path) -> Any:
    from ddcore.evaluate.teacher import load_teacher

    return load_teacher(str(folder))


def _broken_denoiser(tmp: Path) -> Any:
    """A denoiser folder (tiny UNet + DDIM) whose UNet weights are cut in half, then loaded."""
    import torch
    from diffusers import DDIMScheduler, UNet2DModel

    from ddcore.latent.pushforward import load_denoiser, save_denoiser

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=4, in_channels=2, out_channels=2, layers_per_block=1, block_out_channels=(8, 8),
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, norm_num_groups=8)
    save_denoiser(tmp / "denoiser", unet, DDIMScheduler(num_train_timesteps=10))
    weights = tmp / "denoiser" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return load_denoiser(tmp / "denoiser")


def _vae_folder(tmp: Path, class_name: str, weights: bytes | None) -> str:
    folder = tmp / "vae"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": class_name}))
    if weights is not None:
        (folder / "diffusion_pytorch_model.safetensors").write_bytes(weights)
    return str(folder)


class _Evil:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return print, ("this must never run",)


def _cifar(tmp: Path) -> str:
    (tmp / "cifar").mkdir()
    (tmp / "cifar" / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2))
    return str(tmp / "cifar")


def _no_space(tmp: Path, fmnist: Path) -> Case:
    from ddcore.data import storage

    @contextmanager
    def full_disk() -> Iterator[None]:
        real = storage.open_write

        class Full:
            def __init__(self, f: Any) -> None:
                self.f = f

            def write(self, data: Any) -> int:
                raise OSError(28, os.strerror(28))

            def __getattr__(self, name: str) -> Any:
                return getattr(self.f, name)

        storage.open_write = lambda fs, path: Full(real(fs, path)) if path.endswith(".tar") else real(fs, path)
        try:
            yield
        finally:
            storage.open_write = real

    return Case(args=["ingest", str(fmnist), "--out", str(tmp / "out")], context=full_disk)


def _no_prefect_api() -> Any:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings(restore_defaults={PREFECT_API_URL})


def _fake_ray(cpus: float, gpus: float) -> None:
    from flows.runners import check_ray_resources

    ray = types.SimpleNamespace(is_initialized=lambda: True,
                                cluster_resources=lambda: {"CPU": cpus, **({"GPU": gpus} if gpus else {})})
    saved = sys.modules.get("ray")
    sys.modules["ray"] = ray  # type: ignore[assignment]
    try:
        check_ray_resources(1.0, 1.0)
    finally:
        if saved is None:
            sys.modules.pop("ray", None)
        else:
            sys.modules["ray"] = saved


def _lock_timeout(tmp: Path) -> None:
    from tasks.runtime.store import ArtifactStore

    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with ArtifactStore(tmp / "root").lock("distill", "0123456789abcdef0123"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        held.wait(10)
        with ArtifactStore(tmp / "root", lock_timeout=0.2).lock("distill", "0123456789abcdef0123"):
            pass
    finally:
        release.set()
        t.join(10)


def _corrupt_checkpoint_first(tmp: Path, fmnist: Path) -> Case:
    body = "methods: {dm: {iterations: 4, width: 8, batch_real: 8, checkpoint_every: 1, log_every: 1}}"

    def prepare() -> None:
        from typer.testing import CliRunner

        from flows.cli import app

        os.environ["DDFLOW_FAULT"] = "distill:step2"
        try:
            CliRunner().invoke(app, ["run", run_config(tmp, fmnist, body, "first.yaml"), "--root", str(tmp / "root")])
        finally:
            del os.environ["DDFLOW_FAULT"]
        for ckpt in (tmp / "root" / "_checkpoints" / "distill").glob("*/loop.pt"):
            ckpt.write_bytes(b"not a checkpoint")

    return _run(tmp, fmnist, body, prepare=prepare)


def _gz_truncated(tmp: Path, fmnist: Path) -> Case:
    folder = tmp / "fm"
    folder.mkdir()
    for f in fmnist.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    blob = (folder / "train-images-idx3-ubyte.gz").read_bytes()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    return Case(args=["ingest", str(folder), "--out", str(tmp / "out")])


def _idx_incomplete(tmp: Path) -> Case:
    (tmp / "fm").mkdir()
    with gzip.open(tmp / "fm" / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1, 0, 0, 0, 0]))
    return Case(args=["ingest", str(tmp / "fm"), "--out", str(tmp / "out")])


def _ray_unreachable() -> None:
    """Connect to a Ray head at a port nobody listens on."""
    from flows.runners import check_ray_reachable
    from flows.temp_server import free_port

    check_ray_reachable(f"127.0.0.1:{free_port()}")


def _bomb(tmp: Path) -> Case:
    import struct
    import zlib

    root = Path(_folder(tmp, {"a": [(8, 8)], "b": [(8, 8)]}))
    data = bytearray(encode_png(np.zeros((1, 1), np.uint8)))
    data[16:24] = struct.pack(">II", 20000, 20000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    (root / "b" / "1.png").write_bytes(bytes(data))
    return Case(args=["ingest", str(root), "--out", str(tmp / "out")])


def _pt(tmp: Path, obj: Any) -> str:
    """``obj`` saved with torch.save as ``tmp/x.pt``, numpy arrays (also as dict values) as tensors; bytes are
    written as they are."""
    import torch

    def tensor(v: Any) -> Any:
        return torch.from_numpy(v) if isinstance(v, np.ndarray) else v

    path = tmp / "x.pt"
    if isinstance(obj, bytes):
        path.write_bytes(obj)
    else:
        torch.save({k: tensor(v) for k, v in obj.items()} if isinstance(obj, dict) else tensor(obj), path)
    return str(path)


def _hf_folder(tmp: Path, *, image_column: str = "image", state: bool = True) -> str:
    """A one-split save_to_disk-style folder (``tmp/hf``): an Arrow stream with ``image_column`` and ``label``."""
    import pyarrow as pa

    root = tmp / "hf"
    (root / "train").mkdir(parents=True)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    table = pa.table({image_column: [{"bytes": encode_png(np.zeros((4, 4), np.uint8)), "path": None}], "label": [0]})
    with pa.OSFile(str(root / "train" / "data.arrow"), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table)
    (root / "train" / "dataset_info.json").write_text("{}")
    if state:
        (root / "train" / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data.arrow"}]}))
    return str(root)


@contextmanager
def _no_datasets() -> Iterator[None]:
    """``import datasets`` fails inside (as without the optional package)."""
    saved = sys.modules.get("datasets")
    sys.modules["datasets"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if saved is None:
            del sys.modules["datasets"]
        else:
            sys.modules["datasets"] = saved


def _artifact_source(tmp: Path, fmnist: Path, path: Path | str, *, damage: Callable[[Path], Any] | None = None,
                     sha256: str | None = None) -> Case:
    """A run whose data is ``{kind: artifact, path: path}`` (optionally damaged first, or pinned to ``sha256``); it
    fails in its ingest stage."""
    if damage is not None:
        damage(Path(path))
    pin = f", sha256: '{sha256}'" if sha256 else ""
    return _run(tmp, fmnist, "methods: {random: {width: 8}}", source=f"{{kind: artifact, path: '{path}'{pin}}}")
