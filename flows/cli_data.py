"""``ddflow`` commands on dataset artifacts: ingest, info, show, export (registered on :data:`flows.cli.app`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flows.cli import app, console, err_console, user_errors


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err_console, transient=True, disable=not sys.stderr.isatty())


@app.command()
def ingest(
    source: Annotated[str, typer.Argument(help="'fashion-mnist', a folder, a .npz file or a shard URL.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Artifact folder or fsspec URL to create.")],
    name: Annotated[str | None, typer.Option(help="Dataset name.")] = None,
    test_fraction: Annotated[float, typer.Option(help="Hold-out fraction when the source has no test split.")] = 0.0,
    split_seed: Annotated[int, typer.Option(help="Seed of that hold-out split.")] = 0,
    resize: Annotated[str | None, typer.Option(help="Resize image-folder images to HxW, e.g. 32x32.")] = None,
    channels: Annotated[int | None, typer.Option(help="Force 1 or 3 channels (image folders).")] = None,
    test_url: Annotated[str | None, typer.Option(help="Shard URL of the test split (webdataset sources).")] = None,
    layout: Annotated[str, typer.Option(help="Shard sources: 'reencode' (ddflow's PNG shards), 'in_place' (index "
                                        "the shards where they are: no copy, no re-encode) or 'copy' (index and "
                                        "copy them byte for byte).")] = "reencode",
    shard_size: Annotated[int, typer.Option(help="Samples per shard.")] = 5000,
    workers: Annotated[int, typer.Option(help="Processes reading at once (shards indexed in place, image "
                                         "folders); the artifact is the same for any count.")] = 1,
    max_per_class: Annotated[int | None, typer.Option(help="Keep at most N samples per class and split.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing artifact at --out.")] = False,
    allow_16bit: Annotated[bool, typer.Option("--allow-16bit", help="Convert image-folder images of more than 8 bits "
                                              "per sample to 8 bits (values above 255 clip) instead of refusing.")]
    = False,
) -> None:
    """Turn a source into a canonical dataset artifact (WebDataset shards + manifest)."""
    with user_errors():
        from ddcore.data.ingestion import IngestConfig
        from ddcore.data.ingestion import ingest as run_ingest
        from flows.source_args import source_from_argument

        spec = source_from_argument(source, name=name, test_fraction=test_fraction, split_seed=split_seed,
                                    resize=resize, channels=channels, test_url=test_url, allow_16bit=allow_16bit,
                                    layout=layout)
        cfg = IngestConfig.from_mapping({"source": spec, "shard_size": shard_size, "max_per_class": max_per_class,
                                         "workers": workers}, where="ingest")
        with _progress() as bar:
            task = bar.add_task("ingest", total=None)
            meta = run_ingest(cfg, out, overwrite=overwrite,
                              progress=lambda n, total: bar.update(task, completed=n, total=total))
    _print_info(out, meta)


def _print_info(uri: str | Path, meta: object) -> None:
    from ddcore.data.meta import DatasetMeta

    assert isinstance(meta, DatasetMeta)
    table = Table(title=f"{meta.name}  ({uri})", show_lines=False)
    table.add_column("class")
    for split in meta.splits:
        table.add_column(split, justify="right")
    for i, cls in enumerate(meta.classes):
        table.add_row(f"{i} {cls}", *[str(meta.counts[s]["per_class"][i]) for s in meta.splits])
    table.add_row("[bold]total", *[f"[bold]{meta.counts[s]['total']}" for s in meta.splits])
    console.print(table)
    c, h, w = meta.image_shape
    where = f" (indexed in place at {meta.shard_root})" if meta.in_place else ""
    console.print(f"image shape: {c}x{h}x{w}   storage: {meta.storage}   shards: {len(meta.shards)}{where}")
    console.print(f"mean: {meta.mean}   std: {meta.std}")
    console.print(f"source: {json.dumps(meta.source, sort_keys=True)}")
    if meta.extra.get("synthetic"):
        console.print(f"synthetic: method={meta.extra.get('method')} ipc={meta.extra.get('ipc')} "
                      f"seeds={meta.extra.get('seeds')}")
    console.print(f"digest: {meta.digest}")


@app.command()
def info(
    artifact: Annotated[str, typer.Argument(help="Artifact folder or URL.")],
    verify: Annotated[str, typer.Option(help="none | quick | full")] = "quick",
    as_json: Annotated[bool, typer.Option("--json", help="Print dataset.json instead of a table.")] = False,
) -> None:
    """Classes, counts per split, shape, normalisation and digest of an artifact."""
    with user_errors():
        from ddcore.data.artifact import DatasetArtifact

        art = DatasetArtifact.open(artifact, verify=verify)
    if as_json:
        console.print_json(art.meta.to_json())
    else:
        _print_info(artifact, art.meta)


@app.command()
def show(
    artifact: Annotated[str, typer.Argument(help="Artifact folder or URL.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")] = Path("grid.png"),
    split: Annotated[str, typer.Option(help="Split to draw from.")] = "train",
    per_class: Annotated[int, typer.Option(help="Images per class (columns).")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the random pick.")] = 0,
    scale: Annotated[int, typer.Option(help="Pixel magnification.")] = 2,
) -> None:
    """Write a PNG grid with one row of images per class."""
    with user_errors():
        from ddcore.data.artifact import DatasetArtifact
        from ddcore.data.grid import artifact_grid, png_bytes
        from ddcore.data.storage import check_output_file, write_file_atomic

        check_output_file(out)  # before drawing: a bad --out fails at once
        art = DatasetArtifact.open(artifact)
        write_file_atomic(out, png_bytes(artifact_grid(art, split=split, per_class=per_class, seed=seed, scale=scale)))
    console.print(f"wrote {out}")


@app.command()
def export(
    artifact: Annotated[str, typer.Argument(help="Dataset artifact (folder or URL) to export, e.g. a distilled set.")],
    fmt: Annotated[str, typer.Option("--format", help="png | imagefolder | pt | hf")],
    out: Annotated[str, typer.Option("--out", "-o", help="Local folder to create (absent or empty).")],
    split: Annotated[str | None, typer.Option(help="Only this split (default: train for png, all for the others).")]
    = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it is not empty (its contents are deleted).")]
    = False,
) -> None:
    """Export an artifact for other tools: png (per-class PNG folders of one split), imagefolder (train/ and test/
    class folders, ingestible), pt (one dict of tensors for torch.load(weights_only=True)), hf (a Hugging Face
    datasets folder, load_from_disk). imagefolder, pt and hf read back with 'ddflow ingest OUT'."""
    with user_errors():
        from ddcore.data.export import export_artifact

        res = export_artifact(artifact, fmt, out, split=split, overwrite=overwrite)
    counts = ", ".join(f"{s} {n}" for s, n in res.counts.items())
    console.print(f"wrote {res.fmt} export of {sum(res.counts.values())} images ({counts}) to {res.out}")
    for note in res.notes:
        console.print(f"note: {note}")
