"""The GPU suite (marker ``gpu``): each stage's computation runs on the device, the inner loops make no hidden
host round trips, device memory is released when a stage's objects go, and a seeded stage repeats bit for bit.

The device is ``DDFLOW_TEST_DEVICE`` (default ``cuda``). Without CUDA the suite is skipped (tests/conftest.py),
except under ``DDFLOW_TEST_DEVICE=cpu``, which ``benchmarks/gpu_check.sh --dry-run`` sets so that CI runs the
same code on the CPU; the checks that only mean something on CUDA (read-backs counted by torch's sync debug
mode, the caching allocator's memory) skip there. The stages are driven through ``ddcore.api`` and the
distillation steps, the code the Prefect tasks call with ``ctx.device``: the device machine has no Prefect or
MLflow, and the task layer adds no tensor work of its own.

Written without a GPU and first run on an H200 on 2026-12-04 (docs/results.md, "The GPU check"): that run found
the read-backs the fast embedding and the HDD curvature made, since removed; all 13 cases pass there.
"""

from __future__ import annotations

import gc
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import class_images
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ddcore import api
from ddcore.data.artifact import DatasetArtifact
from ddcore.distill.config import DistillConfig
from ddcore.distill.init import initial_images
from ddcore.distill.loop import STEPS
from ddcore.sampling import TensorSampler
from ddcore.seeding import IterationRng

pytestmark = pytest.mark.gpu
DEVICE = os.environ.get("DDFLOW_TEST_DEVICE", "cuda")
cuda_only = pytest.mark.skipif(not DEVICE.startswith("cuda"),
                               reason="counts CUDA read-backs or allocator memory; the CPU has neither")
HEAVY = ("convolution", "mm", "addmm", "bmm", "baddbmm", "_scaled_dot_product", "native_group_norm",
         "native_batch_norm", "_native_batch_norm", "cudnn_batch_norm", "native_layer_norm")
"""Prefixes of the aten ops that carry a stage's arithmetic (convolutions and their backward, matrix products,
attention, normalisation)."""
TINY_EVAL = {"protocol": "dm", "epochs": 2, "num_eval": 1, "width": 16, "batch_size": 16}


class OpDevices(TorchDispatchMode):
    """Counts ``(op, device type)`` of every :data:`HEAVY` aten op dispatched in this thread while active."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[tuple[str, str]] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name.startswith(HEAVY):
            # a 0-dim CPU tensor is a scalar argument CUDA kernels take by value (e.g. the philox seed and offset
            # of the efficient-attention backward), not work on the host
            for dev in {t.device.type for t in tree_leaves((args, kwargs))
                        if isinstance(t, torch.Tensor) and not (t.ndim == 0 and t.device.type == "cpu")}:
                self.seen[(name, dev)] += 1
        return func(*args, **kwargs)

    def off_device(self) -> dict[tuple[str, str], int]:
        want = torch.device(DEVICE).type
        return {k: v for k, v in self.seen.items() if k[1] != want}


@contextmanager
def read_backs() -> Iterator[list[str]]:
    """The messages of every synchronising CUDA call (device-to-host copies, ``.item()``, blocking copies) made
    while active, from ``torch.cuda.set_sync_debug_mode('warn')``."""
    torch.cuda.synchronize()
    found: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # the one-off notice that the mode is a prototype also mentions synchronisation: only the calls count
    found += [str(w.message) for w in caught if "called a synchronizing" in str(w.message).lower()]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> DatasetArtifact:
    """3 classes of 3x32x32 images (24 train, 6 test each) from an npz, ingested with the API."""
    root = tmp_path_factory.mktemp("gpu-data")
    x, y = class_images(24, 3, shape=(32, 32, 3), seed=0)
    xt, yt = class_images(6, 3, shape=(32, 32, 3), seed=1)
    np.savez(root / "d.npz", x=x, y=y, x_test=xt, y_test=yt)
    return api.load_dataset({"kind": "npz", "path": str(root / "d.npz"), "classes": ["a", "b", "c"]},
                            out=root / "data")


@pytest.fixture(scope="module")
def latents(data: DatasetArtifact, tmp_path_factory: pytest.TempPathFactory) -> api.LatentFolders:
    """A VAE trained for one epoch on the device and the train split encoded with it."""
    return api.prepare_latents(data, tmp_path_factory.mktemp("gpu-latents"), device=DEVICE, batch_size=32,
                               vae={"source": "train", "epochs": 1, "batch_size": 32})


def _on_device(fn: Callable[[], Any]) -> tuple[Any, OpDevices]:
    with OpDevices() as ops:
        out = fn()
    return out, ops


METHODS = {
    "dm": {"iterations": 3, "batch_real": 8, "width": 16},
    "hdd": {"iterations": 3, "batch_real": 8, "width": 16},
    "ncfm": {"iterations": 3, "batch_real": 8, "width": 16, "ncfm": {"num_freqs": 64, "factor": 2}},
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_distillation_runs_every_product_on_the_device(data: DatasetArtifact, method: str) -> None:
    """Every convolution, matrix product and normalisation of a DM/HDD/NCFM run is dispatched on the device, and
    the returned set is on the host with the requested shape."""
    sset, ops = _on_device(lambda: api.distill(data, method, ipc=2, device=DEVICE, **METHODS[method]))
    assert sum(ops.seen.values()) > 0 and ops.off_device() == {}
    assert sset.images.device.type == "cpu" and sset.images.shape[0] == 3 * 2 * (4 if method == "ncfm" else 1)


def test_latent_stages_run_on_the_device(data: DatasetArtifact, latents: api.LatentFolders) -> None:
    """DDOQ on latents made on the device (the latents fixture): its k-means and the decoding of its centroids
    dispatch every product on the device, and the set carries the Voronoi weights."""
    sset, ops = _on_device(lambda: api.distill(data, "ddoq", ipc=2, latents=latents, device=DEVICE))
    assert sum(ops.seen.values()) > 0 and ops.off_device() == {}
    assert sset.weights is not None and sset.images.shape[0] == 6


def test_encoding_runs_on_the_device(data: DatasetArtifact, tmp_path: Path) -> None:
    """Training the VAE and encoding the split dispatch every product on the device."""
    _, ops = _on_device(lambda: api.prepare_latents(data, tmp_path, device=DEVICE, batch_size=32,
                                                    vae={"source": "train", "epochs": 1, "batch_size": 32}))
    assert sum(ops.seen.values()) > 0 and ops.off_device() == {}


def test_evaluation_trains_and_tests_on_the_device(data: DatasetArtifact) -> None:
    """An evaluation round and its random baseline train and test their networks on the device."""
    sset = api.distill(data, "random", ipc=2)
    ev, ops = _on_device(lambda: api.evaluate(sset, data, config=TINY_EVAL, device=DEVICE))
    assert sum(ops.seen.values()) > 0 and ops.off_device() == {}
    assert 0.0 <= ev.synthetic.mean <= 1.0 and len(ev.random.accs) == 1


def _step(method: str, sampler: TensorSampler) -> tuple[Any, torch.Tensor, torch.Tensor, torch.optim.Optimizer]:
    cfg = DistillConfig.from_mapping({"method": method, "ipc": 2, **METHODS[method]}, where="test")
    dev = torch.device(DEVICE)
    labels = torch.arange(3).repeat_interleave(2)
    step = STEPS[method].build(sampler, cfg, dev, None, None)
    syn = step.initial(initial_images(sampler, ipc=2, init=cfg.init, seed=0, classes=[0, 1, 2])).to(dev)
    syn.requires_grad_(True)
    return step, syn, labels, step.optimizer(syn)


@cuda_only
@pytest.mark.parametrize("method", sorted(METHODS))
def test_an_iteration_reads_back_only_its_loss(method: str) -> None:
    """After a warm-up iteration, each DM/HDD/NCFM iteration makes exactly one synchronising call: reading its loss
    for the log. Real batches, augmentation parameters, network re-draws and labels go host-to-device without a
    wait; nothing in the per-class or per-chunk loops reads the device back."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3 * 24, 3, 32, 32, generator=g)
    sampler = TensorSampler(x, torch.arange(3).repeat_interleave(24), 3, (0.0,) * 3, (1.0,) * 3)
    step, syn, labels, opt = _step(method, sampler)
    step(syn, labels, opt, IterationRng(0, 0))
    with read_backs() as found:
        for it in (1, 2, 3):
            step(syn, labels, opt, IterationRng(0, it))
    assert len(found) == 3, found


@cuda_only
def test_frequencies_are_drawn_on_the_device_from_the_host_stream() -> None:
    """NCFM's frequencies on a GPU come from a device generator seeded by the host stream: on the device, the same
    for the same seed, standard normal, with no synchronising call (no 33 MB host draw and copy)."""
    from ddcore.distill.sampling_net import gaussian_frequencies

    def draw() -> torch.Tensor:
        return gaussian_frequencies(4096, 256, generator=torch.Generator().manual_seed(3), device=DEVICE)

    draw()
    with read_backs() as found:
        a = draw()
    b = draw()
    assert found == [] and a.device.type == "cuda" and torch.equal(a, b)
    assert abs(float(a.mean())) < 0.01 and abs(float(a.std()) - 1.0) < 0.01


@cuda_only
def test_real_draws_are_gathered_in_device_memory(data: DatasetArtifact) -> None:
    """The distillation loop's sampler on a GPU (on_device) caches classes in device memory and returns its draws
    there, the same images as the host sampler's, with no synchronising call once the class is cached."""
    from ddcore.data.loader import ArtifactSampler
    from ddcore.sampling import on_device

    host = ArtifactSampler(data, "train")
    dev = on_device(host, DEVICE)
    dev.sample(0, 8, torch.Generator().manual_seed(0))
    with read_backs() as found:
        got = dev.sample(0, 8, torch.Generator().manual_seed(1))
    assert found == [] and got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), host.sample(0, 8, torch.Generator().manual_seed(1)), rtol=0, atol=1e-6)


@cuda_only
def test_an_evaluation_pass_reads_back_once() -> None:
    """A training pass of the evaluation network over 4 batches reads the device back once (its mean loss)."""
    from ddcore.evaluate.loss import Targets
    from ddcore.evaluate.protocol import EvalConfig
    from ddcore.evaluate.train import train_one_pass

    cfg = EvalConfig.dm_protocol(epochs=1, width=16, batch_size=8)
    net = cfg.network_spec.build(channels=3, num_classes=3, image_size=32, seed=0).to(DEVICE)
    images = torch.randn(32, 3, 32, 32, device=DEVICE)
    targets = Targets.prepare(torch.arange(3).repeat(11)[:32], weights=None, soft_labels=None, teacher=None,
                              temperature=1.0, device=DEVICE)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    train_one_pass(net, opt, images, targets, cfg, shuffle=torch.Generator().manual_seed(0),
                   augment=torch.Generator().manual_seed(1))
    with read_backs() as found:
        train_one_pass(net, opt, images, targets, cfg, shuffle=torch.Generator().manual_seed(0),
                       augment=torch.Generator().manual_seed(1))
    assert len(found) == 1, found


@cuda_only
def test_device_memory_is_released_after_a_stage(data: DatasetArtifact) -> None:
    """Once a distillation and an evaluation return and their results are dropped, the allocator holds no more
    than before them (nothing cached on the device between stages)."""
    gc.collect()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    sset = api.distill(data, "ncfm", ipc=2, device=DEVICE, **METHODS["ncfm"])
    api.evaluate(sset, data, config=TINY_EVAL, device=DEVICE)
    del sset
    gc.collect()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= before + (1 << 20)


@pytest.mark.parametrize("method", ["dm", "hdd"])
def test_a_seeded_distillation_repeats_bit_for_bit(data: DatasetArtifact, method: str) -> None:
    """With torch's deterministic algorithms on, the same config and seed give the same images twice on the
    device. The augmentation leaves out scale and rotate: their grid_sample has no deterministic CUDA backward,
    so the published strategy can only match to rounding on a GPU (CUBLAS_WORKSPACE_CONFIG, which deterministic
    cuBLAS needs, is set in tests/conftest.py before CUDA starts)."""
    fields = {**METHODS[method], "dsa_strategy": "color_crop_cutout_flip"}
    torch.use_deterministic_algorithms(True)
    try:
        a = api.distill(data, method, ipc=2, device=DEVICE, **fields)
        b = api.distill(data, method, ipc=2, device=DEVICE, **fields)
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(a.images, b.images)
