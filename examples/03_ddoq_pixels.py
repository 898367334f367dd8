"""DDOQ and D4M on pixels: the same per-class k-means in both, Voronoi cell masses as image weights in DDOQ,
uniform weights in D4M; the W2 distance of each quantizer to the class's images, and both sets evaluated
(DDOQ trains with its weights).

    python examples/03_ddoq_pixels.py --data fashion-mnist --ipc 10 --out examples-out

The identity autoencoder (``vae: {source: identity}``) makes the pixels the latents, so nothing is trained:
the pixel-space reference point of the latent methods. Sets go to OUT/ddoq-ipc<IPC> and OUT/d4m-ipc<IPC>.
"""

from __future__ import annotations

from pathlib import Path

import _common as common

from ddcore import api


def main(argv: list[str] | None = None) -> dict[str, dict]:
    args = common.parser(__doc__).parse_args(argv)
    data = common.dataset(args)
    latents = api.prepare_latents(data, Path(args.out) / "pixels", vae={"source": "identity"}, device=args.device)
    found = {}
    for variant in ("ddoq", "d4m"):
        sset = api.distill(data, variant, ipc=args.ipc, seed=args.seed, latents=latents, device=args.device)
        ev = api.evaluate(sset, data, config=common.eval_config(args), device=args.device)
        saved = api.save_set(sset, data, Path(args.out) / f"{variant}-ipc{args.ipc}", overwrite=True)
        print(f"{common.score_line(variant, ev)}; saved {saved.uri}")
        found[variant] = {"set": Path(saved.uri), "w2": sset.extra["w2"]}
    w2 = found["ddoq"]["w2"]  # both variants quantize to the same centroids; only the weights differ
    print(f"W2 to each class's images, mean over classes: weighted by cell mass (DDOQ) {w2['mean_w2_weighted']:.3f}, "
          f"uniform (D4M) {w2['mean_w2_uniform']:.3f}")
    return found


if __name__ == "__main__":
    main()
