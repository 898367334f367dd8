"""Latent artifacts (ddcore.latent.shards), the latent stage bodies (tasks.latents) and DDOQ on a latent
artifact (ddcore.latent.method)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from ddcore.data import ArtifactWriter, open_artifact
from ddcore.data.synthetic_io import load_synthetic, save_synthetic
from ddcore.errors import ArtifactError
from ddcore.latent.ddoq import DDOQConfig
from ddcore.latent.method import distill_from_latents
from ddcore.latent.reader import LATENT_META, latents_by_class, open_latents
from ddcore.latent.shards import encode_dataset, pixel_batch
from ddcore.latent.vae import VAEConfig, build_vae, encode
from tasks.latents import encode_latents_stage, train_or_load_vae

NUM_CLASSES, PER_CLASS, SIZE = 3, 20, 16
VAE_CFG = VAEConfig(block_out_channels=(8, 16, 16), norm_num_groups=8, latent_channels=2, epochs=1,
                    batch_size=20, mid_block_attention=False)


def make_dataset(root: Path) -> Path:
    """A png dataset artifact: 3 classes x 20 train images of 1x16x16 (class c brightens band c)."""
    rng = np.random.default_rng(0)
    out = root / "ds"
    with ArtifactWriter(out, name="tiny", classes=["a", "b", "c"], image_shape=(1, SIZE, SIZE),
                        source={"kind": "test"}) as w:
        for i in range(NUM_CLASSES * PER_CLASS):
            c = i % NUM_CLASSES
            img = rng.integers(0, 60, (SIZE, SIZE, 1), dtype=np.uint8)
            img[4 * c : 4 * c + 5] += 150 + rng.integers(0, 40, dtype=np.uint8)
            w.add("train", f"img_{i:04d}", img, c)
        w.commit()
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("latent")
    ds = make_dataset(root)
    vae = build_vae(VAE_CFG, 1, SIZE).eval()
    return root, open_artifact(ds), vae


def test_round_trip_equals_direct_encode(setup, tmp_path: Path) -> None:
    """encode_dataset -> shards -> latents_by_class gives, per class and in stored order, the same keys as
    the source manifest and latents bit-identical (float32) to encode() of the same images; the published
    folder holds only shards, manifest and latents.json, and the shards are readable WebDataset samples."""
    _, art, vae = setup
    meta = encode_dataset(art, vae, tmp_path / "lat", batch_size=8, shard_size=16, dtype="float32")
    assert meta.counts["total"] == NUM_CLASSES * PER_CLASS and meta.latent_shape == [2, 4, 4]
    assert sorted(p.name for p in (tmp_path / "lat").iterdir()) == [
        "latents-000000.tar", "latents-000001.tar", "latents-000002.tar", "latents-000003.tar",
        LATENT_META, "manifest.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lat"]  # no partial / temp folders left
    lat = open_latents(tmp_path / "lat", verify="full")
    rows = art.rows("train")
    direct = encode(vae, pixel_batch(art, rows), sample=False, chunk=8)
    labels = art.labels[rows]
    for c in range(NUM_CLASSES):
        got = torch.cat(list(latents_by_class(lat, c, 5)))
        assert got.dtype == torch.float32
        assert torch.equal(got, direct[torch.from_numpy(labels == c)])
        assert [lat.keys[r] for r in lat.class_rows(c)] == [art.keys[r] for r in art.class_rows("train")[c]]
    import webdataset as wds

    sample = next(iter(wds.WebDataset(lat.shard_urls(), shardshuffle=False, empty_check=False)))
    assert sample["__key__"] == art.keys[rows[0]] and {"cls", "npy"} <= set(sample)


def test_interrupted_encode_resumes_with_same_digest(setup, tmp_path: Path) -> None:
    """An encode interrupted after its first shard (exception from the progress callback) leaves nothing
    complete at `out`; the rerun reuses the finished shard (encodes only the rest) and gives the same
    digest and identical shard bytes as an uninterrupted run; a stale work folder of another run is reset."""
    _, art, vae = setup
    ref = encode_dataset(art, vae, tmp_path / "ref", batch_size=10, shard_size=20, dtype="float16")

    class Stop(Exception):
        pass

    def stop_after_first(done: int, total: int) -> None:
        if done == 20:
            raise Stop

    work = tmp_path / "ckpt"
    with pytest.raises(Stop):
        encode_dataset(art, vae, tmp_path / "out", batch_size=10, shard_size=20, dtype="float16",
                       progress=stop_after_first, work_dir=work)
    assert not (tmp_path / "out").exists()
    assert (work / "latents-partial" / "latents-000000.tar").is_file()
    again = encode_dataset(art, vae, tmp_path / "out", batch_size=10, shard_size=20, dtype="float16",
                           work_dir=work)
    assert again.run["reused_shards"] == 1 and again.run["encoded"] == NUM_CLASSES * PER_CLASS - 20
    assert again.digest == ref.digest and again.shards == ref.shards
    assert not (work / "latents-partial").exists()
    # a complete artifact with the same identity is returned as is
    assert encode_dataset(art, vae, tmp_path / "out", batch_size=10, shard_size=20,
                          dtype="float16", work_dir=work).run["encoded"] == 0
    # leftovers from another run (other dtype) are not reused
    with pytest.raises(Stop):
        encode_dataset(art, vae, tmp_path / "o2", batch_size=10, shard_size=20, dtype="float32",
                       progress=stop_after_first, work_dir=work)
    other = encode_dataset(art, vae, tmp_path / "o2", batch_size=10, shard_size=20, dtype="float16", work_dir=work)
    assert other.run["reused_shards"] == 0 and other.digest == ref.digest


def test_truncated_or_altered_shard_is_detected(setup, tmp_path: Path) -> None:
    """A truncated shard fails open_latents with one ArtifactError line naming the shard; a same-size
    altered payload passes the quick check but fails the sha256 check when read; missing latents.json
    means no artifact."""
    _, art, vae = setup
    encode_dataset(art, vae, tmp_path / "lat", batch_size=8, shard_size=32, dtype="float32")
    shard = tmp_path / "lat" / "latents-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[:-1024])
    with pytest.raises(ArtifactError, match="latents-000001.tar is truncated") as err:
        open_latents(tmp_path / "lat")
    assert "\n" not in str(err.value)
    lat0 = open_latents(tmp_path / "lat", verify="none")
    row = int(np.flatnonzero(lat0.shards == "latents-000001.tar")[0])
    off = int(lat0.offsets[row]) + int(lat0.sizes[row]) - 1
    shard.write_bytes(data[:off] + bytes([data[off] ^ 0xFF]) + data[off + 1 :])
    lat = open_latents(tmp_path / "lat")  # same size: quick verification passes
    with pytest.raises(ArtifactError, match="sha256"):
        for c in range(NUM_CLASSES):
            list(latents_by_class(lat, c, 64))
    with pytest.raises(ArtifactError, match="full|sha256"):
        open_latents(tmp_path / "lat", verify="full")
    (tmp_path / "lat" / LATENT_META).unlink()
    with pytest.raises(ArtifactError, match="latents.json is missing"):
        open_latents(tmp_path / "lat")


def test_stages_vae_encode_ddoq(setup, tmp_path: Path) -> None:
    """train_or_load_vae trains and saves a VAE (a second call loads it: same digest); encode_latents_stage
    reports n and latents/s; distill_from_latents makes a set that saves and loads back with ipc images per
    class, weights summing to ipc per class (weight_scale 'mean_one'), the W2 report and per-class k-means
    times in extra, and weighted W2 <= uniform W2 for every class."""
    root, art, _ = setup
    ds = str(root / "ds")
    vae, d1 = train_or_load_vae(ds, VAE_CFG, tmp_path / "vae", checkpoint_dir=tmp_path / "ck", device="cpu")
    assert (tmp_path / "vae" / "training.json").is_file()
    _, d2 = train_or_load_vae(ds, VAE_CFG, tmp_path / "vae", checkpoint_dir=tmp_path / "ck", device="cpu")
    assert d1 == d2
    m = encode_latents_stage(ds, tmp_path / "vae", tmp_path / "lat", batch_size=16, dtype="float32",
                             device="cpu", checkpoint_dir=tmp_path / "ck2", shard_size=25)
    assert m["n"] == m["encoded"] == NUM_CLASSES * PER_CLASS and m["latents_per_s"] > 0
    cfg = DDOQConfig(ipc=3, iters=10, batch_size=8, seed=1)
    made = distill_from_latents(open_artifact(ds), tmp_path / "lat", tmp_path / "vae", cfg, device="cpu")
    assert made.images.shape[0] == NUM_CLASSES * 3 and len(made.extra["kmeans_seconds"]) == NUM_CLASSES
    save_synthetic(made, tmp_path / "syn", classes=[str(c) for c in range(NUM_CLASSES)], source={"name": "t"})
    sset = load_synthetic(tmp_path / "syn")
    assert torch.equal(torch.bincount(sset.labels, minlength=NUM_CLASSES), torch.full((NUM_CLASSES,), 3))
    assert sset.weights is not None and sset.images.shape[1:] == (1, SIZE, SIZE)
    w2 = sset.extra["w2"]
    for c in range(NUM_CLASSES):
        assert float(sset.weights[sset.labels == c].sum()) == pytest.approx(3.0, abs=1e-5)
        assert w2["per_class"][c]["w2_weighted"] <= w2["per_class"][c]["w2_uniform"] + 1e-9
    assert len(w2["per_class"]) == NUM_CLASSES and w2["per_class"][0]["n"] == PER_CLASS
    assert w2["mean_reduction"] >= 0


def test_identity_source_runs_ddoq_on_pixels(setup, tmp_path: Path) -> None:
    """vae.source identity: the 'VAE' folder round-trips (same digest on a second call, nothing trained),
    its latents are the images in [-1, 1] (encode and decode are exact inverses), and DDOQ on them gives
    the centroids of the pixel k-means computed directly on the same images with the same class seeds."""
    from ddcore.latent.ddoq import quantize_class
    from ddcore.latent.identity import IdentityAutoencoder
    from ddcore.latent.vae import decode, load_pretrained_vae
    from ddcore.seeding import derive_seed

    root, art, _ = setup
    ds = str(root / "ds")
    cfg_vae = VAEConfig(source="identity")
    vae, d1 = train_or_load_vae(ds, cfg_vae, tmp_path / "id", checkpoint_dir=None, device="cpu")
    _, d2 = train_or_load_vae(ds, cfg_vae, tmp_path / "id", checkpoint_dir=None, device="cpu")
    assert d1 == d2 and isinstance(load_pretrained_vae(tmp_path / "id"), IdentityAutoencoder)
    x = pixel_batch(art, np.arange(6))
    z = encode(vae, x)
    assert torch.equal(z, x * 2 - 1) and torch.allclose(decode(vae, z, image_size=SIZE), x, atol=1e-6)
    encode_latents_stage(ds, tmp_path / "id", tmp_path / "lat", batch_size=16, dtype="float32", device="cpu",
                         checkpoint_dir=tmp_path / "ck", shard_size=25)
    cfg = DDOQConfig(ipc=3, iters=10, batch_size=8, seed=1)
    made = distill_from_latents(open_artifact(ds), tmp_path / "lat", tmp_path / "id", cfg, device="cpu")
    rows = art.class_rows("train")
    for c in range(NUM_CLASSES):
        pix = pixel_batch(art, rows[c]) * 2 - 1
        direct = quantize_class(lambda pix=pix: iter([pix[i : i + 4096] for i in range(0, len(pix), 4096)]), cfg,
                                torch.Generator().manual_seed(derive_seed(cfg.seed, "kmeans", c)))
        got = made.images[made.labels == c] * torch.tensor(art.meta.std).view(1, -1, 1, 1) \
            + torch.tensor(art.meta.mean).view(1, -1, 1, 1)
        assert torch.allclose(got, ((direct.centroids + 1) / 2).clamp(0, 1), atol=1e-5)
        assert made.extra["cell_counts"][c] == direct.counts.tolist()
