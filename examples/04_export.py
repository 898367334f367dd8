"""Export a saved set (or any dataset artifact) for other tools, and read two exports back.

    python examples/04_export.py --set examples-out/dm-ipc10 --out examples-out
    python examples/04_export.py --data fashion-mnist --out examples-out      # no --set: herding IPC 10 first

Writes OUT/export/<format> for png, imagefolder, pt and hf (hf needs ``pip install datasets``), then loads the
``pt`` file with ``torch.load(weights_only=True)`` and ingests the ``imagefolder`` export back as a dataset.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import _common as common
import torch

from ddcore import api


def main(argv: list[str] | None = None) -> dict[str, Path]:
    ap = common.parser(__doc__)
    ap.add_argument("--set", default=None, help="a saved set or dataset artifact to export")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.set is None:
        data = common.dataset(args)
        sset = api.distill(data, "herding", ipc=args.ipc, seed=args.seed, device=args.device,
                           **common.budget("herding", args))
        args.set = api.save_set(sset, data, out / f"herding-ipc{args.ipc}", overwrite=True).uri
    formats = [f for f in api.FORMATS if f != "hf" or importlib.util.find_spec("datasets") is not None]
    written = {f: api.export(args.set, f, out / "export" / f, overwrite=True).out for f in formats}
    pt = torch.load(written["pt"] / "dataset.pt", weights_only=True)
    print(f"pt: images {tuple(pt['images'].shape)} {pt['images'].dtype} in [0, 1], labels {tuple(pt['labels'].shape)}, "
          f"classes {pt['class_names']}")
    back = api.load_dataset({"kind": "image_folder", "root": str(written["imagefolder"])}, out=out / "reingested",
                            overwrite=True)
    print(f"imagefolder ingested back: {back.meta.counts['train']['total']} images, digest {back.digest}")
    for fmt, path in written.items():
        print(f"{fmt}: {path}")
    return written


if __name__ == "__main__":
    main()
