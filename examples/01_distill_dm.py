"""Distil a dataset with DM, score it against random real subsets of the same size, save it as an artifact.

    python examples/01_distill_dm.py --data fashion-mnist --out examples-out
    python examples/01_distill_dm.py --data artifacts/fmnist --ipc 1 --iterations 20 --eval-epochs 5   # quicker

Prints the score line and writes the set to OUT/dm-ipc<IPC> (``ddflow info``/``show``/``export`` read it).
"""

from __future__ import annotations

from pathlib import Path

import _common as common

from ddcore import api


def main(argv: list[str] | None = None) -> Path:
    args = common.parser(__doc__).parse_args(argv)
    data = common.dataset(args)
    sset = api.distill(data, "dm", ipc=args.ipc, seed=args.seed, device=args.device, **common.budget("dm", args))
    ev = api.evaluate(sset, data, config=common.eval_config(args), device=args.device)
    saved = api.save_set(sset, data, Path(args.out) / f"dm-ipc{args.ipc}", overwrite=True)
    print(common.score_line("dm", ev))
    print(f"saved {saved.meta.counts['train']['total']} images to {saved.uri} (digest {saved.digest})")
    return Path(saved.uri)


if __name__ == "__main__":
    main()
