"""Untrusted input is refused, never decoded or executed: pickle-like and unknown shard members, path-like keys
and names, decompression bombs, pickled torch files, and CIFAR batches carrying anything but numpy arrays.
Every malicious payload here would create a marker file if it ever ran; the tests assert it never appears.
(tests/test_data_errors.py has the basic .pyd/.pickle/.pth and CIFAR ``print`` cases.)"""

from __future__ import annotations

import ast
import os
import pathlib
import pickle
import struct
import subprocess
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from conftest import class_images, leftovers
from PIL import Image
from typer.testing import CliRunner

from ddcore.checkpoint import load_state
from ddcore.data import codec
from ddcore.data.meta import KEY_RE
from ddcore.data.sources.arrays import restricted_load
from ddcore.data.writer import ArtifactWriter
from ddcore.distill.pool import FeaturePool
from ddcore.errors import ArtifactError, ConfigError, DataError
from flows.cli import app
from flows.config import RunConfig
from tasks.runtime.store import ArtifactStore

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


class Payload:
    """Unpickling this calls ``func(*args)``: a stand-in for code execution that leaves a marker."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.func, self.args


def _one_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output, result.output
    return lines[0]


def _shard(path: Path, samples: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path), encoder=False) as w:
        for s in samples:
            w.write(s)
    return path


def _samples(n: int = 4, **extra: bytes) -> list[dict]:
    x, y = class_images(n, 2, shape=(8, 8, 3), seed=0)
    return [{"__key__": f"k{i:04d}", "png": codec.encode_png(x[i]), "cls": str(int(y[i])).encode(), **extra}
            for i in range(len(y))]


# -- shard members ----------------------------------------------------------------------------
@pytest.mark.parametrize("member", ["pkl", "joblib", "pt", "npy", "exe", "PYD", "png.pickle", "json.gz"])
def test_unknown_or_pickle_like_shard_members_are_refused(member: str, tmp_path: Path) -> None:
    """``ddflow ingest`` of shards with any member outside the known image/label/json set (including
    mixed-case and compound extensions) fails with one line naming the member, publishes nothing, and
    never unpickles the member."""
    marker = tmp_path / "pwned"
    evil = pickle.dumps(Payload(pathlib.Path.touch, marker))
    tar = _shard(tmp_path / "src" / "s.tar", _samples(**{member: evil}))
    msg = _one_error(runner.invoke(app, ["ingest", str(tar), "--out", str(tmp_path / "out")]))
    assert "refused shard member" in msg and f".{member.lower()}" in msg
    assert leftovers(tmp_path, "out") == [] and not marker.exists()


def test_pipe_urls_run_nothing_without_the_opt_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``pipe:`` shard URL is a shell command: ``ddflow ingest`` refuses it with one line naming the opt-in
    and runs nothing; with ``DDFLOW_ALLOW_PIPE=1`` the same URL is read like the shard it pipes."""
    marker = tmp_path / "pwned"
    tar = _shard(tmp_path / "src" / "s.tar", _samples())
    url = f"pipe:touch {marker} && cat {tar}"
    monkeypatch.delenv("DDFLOW_ALLOW_PIPE", raising=False)
    msg = _one_error(runner.invoke(app, ["ingest", url, "--out", str(tmp_path / "out")]))
    assert "runs a shell command" in msg and "DDFLOW_ALLOW_PIPE=1" in msg
    assert not marker.exists() and leftovers(tmp_path, "out") == []
    monkeypatch.setenv("DDFLOW_ALLOW_PIPE", "1")
    result = runner.invoke(app, ["ingest", url, "--out", str(tmp_path / "out2"), "--test-fraction", "0.25"])
    assert result.exit_code == 0, result.output
    assert marker.exists()


def test_artifact_reader_decodes_known_fields_only(tmp_path: Path) -> None:
    """The reader's decoder refuses unknown fields and .npy members that need pickle (object arrays)."""
    marker = tmp_path / "pwned"
    good = _samples(1)[0]
    with pytest.raises(DataError, match="refused shard member 'k0000.pyd'"):
        codec.decode_sample({**good, "pyd": pickle.dumps(Payload(pathlib.Path.touch, marker))})
    obj = np.array([Payload(pathlib.Path.touch, marker)], dtype=object)
    with pytest.raises(DataError, match="needs pickle"):
        codec.decode_sample({**good, "npy": _npy_with_pickle(obj)})
    assert not marker.exists()


def _npy_with_pickle(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


# -- names that could become paths ------------------------------------------------------------
@pytest.mark.parametrize("key", ["../../escape", "/abs/x", "a/../../b", "../x"])
def test_shard_members_with_path_traversal_are_refused(key: str, tmp_path: Path) -> None:
    """A shard member named ``../../escape.png``, ``/abs/x.png`` or ``a/../../b.png`` fails the ingest with one
    line naming the member; nothing is written anywhere (no --out, nothing outside it)."""
    samples = _samples(3)
    samples[2]["__key__"] = key
    tar = _shard(tmp_path / "deep" / "src" / "s.tar", samples)
    before = set(tmp_path.rglob("*"))
    line = _one_error(runner.invoke(app, ["ingest", str(tar), "--out", str(tmp_path / "deep" / "out")]))
    assert f"refused shard member '{key}." in line and "path traversal" in line, line
    assert set(tmp_path.rglob("*")) == before


def test_flat_shard_keys_are_kept_and_others_re_keyed(tmp_path: Path) -> None:
    """Keys that are plain names but not flat artifact keys (dots) are re-keyed; flat ones are kept."""
    samples = _samples(2)
    samples[1]["__key__"] = "a b"
    tar = _shard(tmp_path / "src" / "s.tar", samples)
    assert runner.invoke(app, ["ingest", str(tar), "--out", str(tmp_path / "out")]).exit_code == 0
    from ddcore.data import open_artifact

    keys = open_artifact(tmp_path / "out").keys
    assert all(KEY_RE.match(k) for k in keys) and "k0000" in keys


@pytest.mark.parametrize("key", ["/etc/passwd", "a\\b", "a\x00b", "~root", "", "a b", "x" * 81, "..\\..\\x"])
def test_writer_refuses_keys_that_are_not_flat_names(key: str, tmp_path: Path) -> None:
    """Sample keys other than 1-80 letters, digits, '_' or '-' are refused and nothing is published."""
    with ArtifactWriter(tmp_path / "o", name="t", classes=["a"], image_shape=(1, 2, 2), source={}) as w, \
            pytest.raises(DataError, match="is not allowed"):
        w.add("train", key, np.zeros((2, 2, 1), np.uint8), 0)
    assert leftovers(tmp_path, "o") == []


def test_yaml_python_tags_run_nothing(tmp_path: Path) -> None:
    """A config (or a --set value) with a ``!!python/object/apply`` tag is one error line naming the tag; the
    command it names never runs."""
    marker = tmp_path / "ran"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f'!!python/object/apply:os.system ["touch {marker}"]\n')
    assert "YAML tag !!python/object/apply:os.system" in _one_error(runner.invoke(app, ["run", str(cfg)]))
    cfg.write_text("name: x\n")
    over = f'name=!!python/object/apply:os.system ["touch {marker}"]'
    line = _one_error(runner.invoke(app, ["run", str(cfg), "--set", over]))
    assert line.startswith("error: override 'name=") and "YAML tag !!python/object/apply:os.system" in line
    assert not marker.exists()


@pytest.mark.parametrize("name", ["..", "../x", "a/b", ".hidden", "-x"])
def test_run_name_cannot_leave_the_runs_folder(name: str) -> None:
    """The run name becomes ``runs/<name>/``: '..', separators and leading dots are a config error."""
    with pytest.raises(ConfigError, match="bad value for 'name'"):
        RunConfig.from_mapping({"name": name, "data": {"source": {"kind": "fashion_mnist"}}}, where="c.yaml")
    assert RunConfig.from_mapping({"name": "ok-1.2_b", "data": {"source": {"kind": "fashion_mnist"}}}).name


@pytest.mark.parametrize(("stage", "key"), [("../x", "0123456789abcdef"), ("a/../../b", "0123456789abcdef"),
                                            ("ingest", "../../etc"), ("ingest", "0123/../../x"), ("_locks", None)])
def test_store_names_cannot_escape_the_root(stage: str, key: str | None, tmp_path: Path) -> None:
    """Stage names and keys become folders under the root: anything else is refused before a path is built."""
    store = ArtifactStore(tmp_path / "root")
    with pytest.raises(ArtifactError, match="not allowed|reserved"):
        if key is None:
            store.location(stage, "0123456789abcdef")
        else:
            store.location(stage, key)
    with pytest.raises(ArtifactError):
        store.checkpoint_dir(stage, key or "0123456789abcdef")
    assert not (tmp_path / "x").exists() and not (tmp_path / "b").exists()


# -- decompression bombs ----------------------------------------------------------------------
def png_claiming(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims ``width`` x ``height`` pixels (the IHDR is rewritten)."""
    data = bytearray(codec.encode_png(np.zeros((1, 1), np.uint8)))
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    return bytes(data)


@pytest.mark.parametrize("side", [9000, 20000], ids=["over-limit", "over-twice-limit"])
@pytest.mark.parametrize("filters", ["error", "ignore"])
def test_decompression_bombs_are_refused(side: int, filters: str) -> None:
    """Images over PIL's pixel limit (ours: 64 Mpx) are refused with DataError whether PIL would only warn
    (1-2x the limit) or raise (over 2x), and whatever the process's warning filters are."""
    assert Image.MAX_IMAGE_PIXELS == codec.MAX_IMAGE_PIXELS and side * side > codec.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter(filters)
        with pytest.raises(DataError, match="decompression bomb|pixel limit"):
            codec.decode_png(png_claiming(side, side))


@pytest.mark.parametrize("kind", ["folder", "shard"])
def test_bombs_in_sources_fail_the_ingest(kind: str, tmp_path: Path) -> None:
    """A bomb among ordinary images (image folder or WebDataset shard) fails ``ddflow ingest`` with one line
    and leaves nothing at --out."""
    if kind == "folder":
        for cls in ("a", "b"):
            (tmp_path / "src" / cls).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "src" / cls / "0.png")
        (tmp_path / "src" / "b" / "1.png").write_bytes(png_claiming(20000, 20000))
        source = str(tmp_path / "src")
    else:
        samples = _samples(2)
        samples[1]["png"] = png_claiming(9000, 9000)
        source = str(_shard(tmp_path / "src" / "s.tar", samples))
    msg = _one_error(runner.invoke(app, ["ingest", source, "--out", str(tmp_path / "out")]))
    assert "decompression bomb" in msg
    assert leftovers(tmp_path, "out") == []


# -- torch.load and pickle in the code ---------------------------------------------------------
def _calls(tree: ast.AST, dotted: str) -> list[ast.Call]:
    mod, _, fn = dotted.rpartition(".")
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == fn and isinstance(n.func.value, ast.Name) and n.func.value.id == mod]


def _kw(call: ast.Call, name: str) -> object:
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<expr>"
    return "<missing>"


def test_code_never_unpickles_untrusted_files() -> None:
    """Across ddcore/, tasks/, flows/ and benchmarks/: every ``torch.load`` passes ``weights_only=True``, no
    ``np.load`` allows pickle, and ``pickle``/``joblib``/``dill`` loaders appear nowhere but in the
    restricted CIFAR unpickler."""
    problems = []
    files = [p for d in ("ddcore", "tasks", "flows", "benchmarks") for p in sorted((REPO / d).rglob("*.py"))]
    assert len(files) > 40
    for path in files:
        tree = ast.parse(path.read_text())
        rel = path.relative_to(REPO)
        problems += [f"{rel}:{c.lineno} torch.load" for c in _calls(tree, "torch.load")
                     if _kw(c, "weights_only") is not True]
        problems += [f"{rel}:{c.lineno} np.load" for c in _calls(tree, "np.load") if _kw(c, "allow_pickle") is True]
        for loader in ("pickle.load", "pickle.loads", "joblib.load", "dill.load", "dill.loads", "pd.read_pickle"):
            problems += [f"{rel}:{c.lineno} {loader}" for c in _calls(tree, loader)]
        if "Unpickler" in path.read_text() and rel.as_posix() != "ddcore/data/sources/arrays.py":
            problems.append(f"{rel}: an Unpickler outside the restricted CIFAR reader")
    assert problems == []


def test_pickled_torch_files_are_refused_without_running_code(tmp_path: Path) -> None:
    """A loop checkpoint or a feature-pool file carrying a pickled callable is refused (weights_only=True)
    as an ArtifactError that names the file and the fix; nothing runs."""
    marker = tmp_path / "pwned"
    (tmp_path / "ckpt").mkdir()
    torch.save({"iteration": 1, "images": Payload(pathlib.Path.touch, marker)}, tmp_path / "ckpt" / "loop.pt")
    with pytest.raises(ArtifactError, match="unreadable .*delete it to restart"):
        load_state(tmp_path / "ckpt" / "loop.pt")
    torch.save({"spec": Payload(os.system, f"touch {marker}"), "members": []}, tmp_path / "pool.pt")
    with pytest.raises(ArtifactError, match="feature pool .*pool.pt is unreadable .*delete it to restart"):
        FeaturePool.load(tmp_path / "pool.pt")
    assert not marker.exists()


# -- CIFAR batches ----------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_unpickler_rebuilds_numpy_arrays(protocol: int) -> None:
    """Batches of numpy arrays, lists and bytes load unchanged whatever the pickle protocol."""
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    out = restricted_load(pickle.dumps({b"data": data, b"labels": [3, 7], b"batch_label": b"x"}, protocol=protocol))
    np.testing.assert_array_equal(out[b"data"], data)
    assert out[b"labels"] == [3, 7] and out[b"data"].dtype == np.uint8


GADGETS = {
    "os.system": lambda m: Payload(os.system, f"touch {m}"),
    "builtins.eval": lambda m: Payload(eval, f"open({str(m)!r}, 'w')"),
    "subprocess.Popen": lambda m: Payload(subprocess.Popen, ["touch", str(m)]),
    "pathlib.Path.touch": lambda m: Payload(pathlib.Path.touch, m),
    "numpy.load": lambda m: Payload(np.load, str(m)),
    "object-array": lambda m: np.array([Payload(pathlib.Path.touch, m)], dtype=object),
}


@pytest.mark.parametrize("gadget", list(GADGETS))
def test_cifar_unpickler_refuses_everything_else(gadget: str, tmp_path: Path) -> None:
    """A batch referencing any callable outside numpy's array reconstruction (also hidden in an object
    array) is refused with one line naming it, before anything runs."""
    marker = tmp_path / "pwned"
    blob = pickle.dumps({b"data": GADGETS[gadget](marker), b"labels": [0]}, protocol=2)
    with pytest.raises(DataError, match="refused to unpickle") as exc:
        restricted_load(blob)
    assert "\n" not in str(exc.value) and not marker.exists()
