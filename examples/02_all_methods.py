"""Every registered method (dm, hdd, ncfm, random, herding, ddoq, d4m) on one dataset at one IPC, each scored
against random real subsets under the same recipe: a markdown table, printed row by row.

    python examples/02_all_methods.py --data fashion-mnist --ipc 1 --out examples-out
    python examples/02_all_methods.py --data artifacts/fmnist --methods dm,random,ddoq

DDOQ and D4M quantize the pixels (the identity autoencoder, ``vae: {source: identity}``) unless ``--vae-epochs``
trains the small VAE first. The table is also written to OUT/methods.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import _common as common

from ddcore import api


def main(argv: list[str] | None = None) -> list[str]:
    ap = common.parser(__doc__)
    ap.add_argument("--methods", default=",".join(api.method_names()), help="comma-separated method names")
    ap.add_argument("--vae-epochs", type=int, default=0, help="train a VAE for DDOQ/D4M (0: pixels)")
    args = ap.parse_args(argv)
    data = common.dataset(args)
    methods = args.methods.split(",")
    latents = None
    if {"ddoq", "d4m"} & set(methods):
        vae = {"source": "train", "epochs": args.vae_epochs} if args.vae_epochs else {"source": "identity"}
        latents = api.prepare_latents(data, Path(args.out) / "latents", vae=vae, device=args.device)
    table = ["| method | images | acc (%) | random (%) | IOR (pts) | seconds |", "|---|---|---|---|---|---|"]
    print("\n".join(table), flush=True)
    for method in methods:
        t0 = time.perf_counter()
        sset = api.distill(data, method, ipc=args.ipc, seed=args.seed, latents=latents, device=args.device,
                           **common.budget(method, args))
        ev = api.evaluate(sset, data, config=common.eval_config(args), device=args.device)
        acc, rdm, ior = common.scores(ev)
        table.append(f"| {method} | {len(sset.labels)} | {acc} | {rdm} | {ior} | {time.perf_counter() - t0:.0f} |")
        print(table[-1], flush=True)
    Path(args.out, "methods.md").write_text("\n".join(table) + "\n")
    return table


if __name__ == "__main__":
    main()
