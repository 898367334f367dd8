"""ddcore.seeding and ddcore.checkpoint: the one place seeds are derived and resumable state is written.

Seeds: both schemes keep the exact bits recorded artifacts were drawn from (pinned values below), are
63-bit, and differ in role. Checkpoints: written atomically (no temporary file survives, a failed save
leaves the previous state), read back with weights_only (tests/test_untrusted_data.py has the pickle cases).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from ddcore.checkpoint import LOOP_CHECKPOINT, load_state, loop_checkpoint, save_state
from ddcore.errors import ArtifactError
from ddcore.seeding import (
    IterationRng,
    derive_seed,
    device_generator,
    generator,
    iteration_generator,
    iteration_seed,
    normal,
)


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**40 + 7])
@pytest.mark.parametrize("tags", [("shuffle",), ("augment",), ("kmeans", 3), ("vae-data", 0), ("pushforward", [1, 2])])
def test_derive_seed_is_the_top_63_bits_of_the_sha256_prefix(seed: int, tags: tuple) -> None:
    """derive_seed(seed, *tags) == little-endian sha256("seed:tag..")[:8] >> 1, always below 2^63."""
    text = ":".join(str(t) for t in (seed, *tags))
    expected = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1
    assert derive_seed(seed, *tags) == expected < 2**63


@pytest.mark.parametrize("seed", [0, 7, 2**31 - 1])
@pytest.mark.parametrize("iteration", [-1, 0, 5, 19999])
@pytest.mark.parametrize("role", ["iter", "class:0", "class:9", "random-subset", "pool-epoch"])
def test_iteration_seed_is_the_low_63_bits_of_the_sha256_prefix(seed: int, iteration: int, role: str) -> None:
    """iteration_seed keeps its own scheme (mask, not shift): the loops' recorded draws depend on it."""
    raw = int.from_bytes(hashlib.sha256(f"{seed}:{iteration}:{role}".encode()).digest()[:8], "little")
    assert iteration_seed(seed, iteration, role) == raw & (2**63 - 1)


def test_pinned_values_never_change() -> None:
    """Known outputs of both schemes (a change here would silently re-draw every stored artifact)."""
    assert derive_seed(0, "shuffle") == 3304739124873914641
    assert iteration_seed(0, 0) == 2709043410015898990


def test_generators_follow_their_seeds() -> None:
    """generator(...) and iteration_generator(...) are CPU generators seeded with the derived seeds."""
    assert generator(3, "augment").initial_seed() == derive_seed(3, "augment")
    assert iteration_generator(3, 4, "class:2").initial_seed() == iteration_seed(3, 4, "class:2")


def test_class_streams_depend_only_on_seed_iteration_and_class() -> None:
    """IterationRng: a class's stream is the same from any IterationRng of that (seed, iteration), and
    differs between classes, iterations and seeds; the shared stream is the 'iter' role."""
    a = torch.rand(4, generator=IterationRng(5, 2).for_class(3))
    assert torch.equal(a, torch.rand(4, generator=IterationRng(5, 2).for_class(3)))
    for other in (IterationRng(5, 2).for_class(4), IterationRng(5, 3).for_class(3), IterationRng(6, 2).for_class(3)):
        assert not torch.equal(a, torch.rand(4, generator=other))
    assert IterationRng(5, 2).shared.initial_seed() == iteration_seed(5, 2, "iter")


@pytest.mark.parametrize("seed", [0, 5])
def test_normal_on_the_generators_device_is_a_plain_draw(seed: int) -> None:
    """normal() on the generator's own device is torch.randn on that generator, to the bit and with the same
    advance of the stream (CPU runs keep their values)."""
    g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    assert torch.equal(normal((64, 8), generator=g1, device="cpu"), torch.randn(64, 8, generator=g2))
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


@pytest.mark.parametrize("seed", [0, 5])
def test_a_device_generator_takes_one_draw_and_repeats(seed: int) -> None:
    """device_generator (the route of normal() to another device) takes exactly one 63-bit draw of the stream
    and gives the same values for the same stream; its draws are standard normal. Run here on the CPU as the
    target; tests/test_gpu.py runs normal() onto CUDA."""
    g1, g2, g3 = (torch.Generator().manual_seed(seed) for _ in range(3))
    a = torch.randn(20000, generator=device_generator(g1, "cpu"))
    b = torch.randn(20000, generator=device_generator(g2, "cpu"))
    assert torch.equal(a, b)
    torch.randint(2**62, (1,), generator=g3)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g3))
    assert abs(float(a.mean())) < 0.03 and abs(float(a.std()) - 1.0) < 0.03


def test_save_state_round_trips_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    """Tensors, numbers, strings and nested containers come back equal; only the target file remains."""
    state = {"iteration": 3, "images": torch.arange(6.0).reshape(2, 3), "history": [[1, 0.5]], "rng": {"seed": 1}}
    path = save_state(tmp_path / "sub" / LOOP_CHECKPOINT, state)
    back = load_state(path)
    assert back is not None and back["iteration"] == 3 and torch.equal(back["images"], state["images"])
    assert back["history"] == [[1, 0.5]] and back["rng"] == {"seed": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == [LOOP_CHECKPOINT]


def test_a_failed_save_keeps_the_previous_state(tmp_path: Path) -> None:
    """A save that fails half-way (an object torch cannot save) leaves the last good state and no temp file."""
    path = save_state(tmp_path / "s.pt", {"iteration": 1})
    with pytest.raises(Exception):  # noqa: B017 - torch raises its own pickling error type
        save_state(path, {"iteration": 2, "bad": lambda: None})
    assert load_state(path) == {"iteration": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.pt"]


def test_missing_state_is_none_and_garbage_is_one_line_artifact_error(tmp_path: Path) -> None:
    """No file (or no folder) means nothing to resume; a truncated or non-mapping file names itself and the fix."""
    assert load_state(None) is None and load_state(tmp_path / "nope.pt") is None
    assert loop_checkpoint(None) is None and loop_checkpoint(tmp_path) == tmp_path / LOOP_CHECKPOINT
    (tmp_path / "bad.pt").write_bytes(b"\x80\x02 truncated")
    with pytest.raises(ArtifactError, match=r"^VAE checkpoint .*bad.pt is unreadable \(.*\); delete it to restart$"):
        load_state(tmp_path / "bad.pt", what="VAE checkpoint")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ArtifactError, match="holds a list, not a state mapping"):
        load_state(tmp_path / "list.pt")
