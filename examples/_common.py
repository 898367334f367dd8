"""Shared command-line glue of the examples: the flags, the dataset, the evaluation recipe, one result line.

Only argparse and printing live here; every call that does work is a ``ddcore.api`` call in the example itself.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ddcore import api
from ddcore.data.artifact import DatasetArtifact


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The flags every example takes; the defaults are a CPU budget of minutes on Fashion-MNIST."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="fashion-mnist",
                    help="an ingested artifact folder, 'fashion-mnist', a folder of Fashion-MNIST IDX files "
                         "(ingested into OUT/data)")
    ap.add_argument("--out", default="examples-out", help="folder for the ingested data and the sets")
    ap.add_argument("--max-per-class", type=int, default=None,
                    help="ingest at most this many images per class and split (a source only)")
    ap.add_argument("--ipc", type=int, default=10, help="images per class")
    ap.add_argument("--iterations", type=int, default=100, help="distillation iterations (DM, HDD, NCFM)")
    ap.add_argument("--width", type=int, default=32, help="ConvNet width for distilling and evaluating")
    ap.add_argument("--batch-real", type=int, default=64, help="real images per class per iteration")
    ap.add_argument("--eval-epochs", type=int, default=50, help="training epochs of each evaluation network")
    ap.add_argument("--num-eval", type=int, default=2, help="evaluation networks per set (and random subsets)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the distillation (every draw derives from it)")
    ap.add_argument("--device", default="cpu")
    return ap


def dataset(args: argparse.Namespace) -> DatasetArtifact:
    """``--data`` opened, or ingested into ``OUT/data`` (replacing an earlier ingest there)."""
    return api.load_dataset(args.data, out=Path(args.out) / "data", max_per_class=args.max_per_class, overwrite=True)


def budget(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """The config fields the flags set for ``method`` (everything else keeps the method's reference default)."""
    if method in ("dm", "hdd", "ncfm"):
        fields: dict[str, Any] = {"iterations": args.iterations, "width": args.width, "batch_real": args.batch_real}
        if method == "ncfm":  # fewer frequencies than the reference 4096, in step with the small budget
            fields["ncfm"] = {"num_freqs": 256}
        return fields
    return {"width": args.width} if method == "herding" else {}


def eval_config(args: argparse.Namespace) -> api.EvalConfig:
    """The DM evaluation protocol, shortened to ``--eval-epochs`` and ``--num-eval`` networks of ``--width``."""
    return api.EvalConfig.dm_protocol(epochs=args.eval_epochs, num_eval=args.num_eval, width=args.width)


def scores(ev: api.Evaluation) -> tuple[str, str, str]:
    """Accuracy of the set, of the random subsets, and the IOR, in percent (points): ``mean ± std`` over rounds."""
    s, r, sc = ev.synthetic, ev.random, ev.scores
    return (f"{100 * s.mean:.1f} ± {100 * s.std:.1f}", f"{100 * r.mean:.1f} ± {100 * r.std:.1f}",
            f"{100 * (sc.ior or 0.0):+.1f} ± {100 * (sc.ior_std or 0.0):.1f}")


def score_line(name: str, ev: api.Evaluation) -> str:
    """``name: acc 81.2 ± 0.4 %, random 72.0 ± 0.9 % (IPC 10), IOR +9.2 ± 0.8 pts``."""
    acc, rdm, ior = scores(ev)
    return f"{name}: acc {acc} %, random {rdm} % (IPC {ev.baseline_ipc}), IOR {ior} pts"
