"""The block tail of the real-side embedding on a device, timed variant by variant: 2x2 average pooling of a
channels-last float32 ``[B, C, H, W]`` tensor, and the affine + ReLU before it.

The first GPU profile of a DM iteration (docs/results.md, "The GPU check") put ``avg_pool2d`` on channels-last
input first among the device's costs. This script measures the alternatives on the same shapes, each against
``F.avg_pool2d`` on NCHW input as the reference (relative error printed), with CUDA events, the median of 20
timed calls after 3 warm-ups, fresh random inputs (never zeros). The NHWC view mean is
``ddcore.nets.fast.pool_2x2_nhwc``, which the embedding's device form adopted after this measurement.

    python -m benchmarks.pool_variants --device cuda --out benchmarks/results/pool_variants.json
    python -m benchmarks.pool_variants --device cpu --batch 16      # the path, not the speed
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks import write_json
from ddcore.nets.fast import pool_2x2_nhwc


def pool_nhwc_adds(h: torch.Tensor) -> torch.Tensor:
    """The same as three strided adds of the four 2x2 corners (no reduction kernel)."""
    out = h[:, :, 0::2, 0::2] + h[:, :, 1::2, 0::2]
    out += h[:, :, 0::2, 1::2]
    out += h[:, :, 1::2, 1::2]
    return out.mul_(0.25)


def _time(fn: Callable[[], torch.Tensor], device: torch.device, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=2560, help="images (10 classes x 256 real, DM on Fashion-MNIST)")
    ap.add_argument("--out", default="benchmarks/results/pool_variants.json")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    g = torch.Generator(device=dev).manual_seed(0)
    rows = []
    for c, px in ((128, 28), (128, 14)):  # the first two blocks of the ConvNet on 28 px (the third pools 7 px)
        h = torch.randn(args.batch, c, px, px, device=dev, generator=g).contiguous(memory_format=torch.channels_last)
        scale = torch.rand(args.batch, c, 1, 1, device=dev, generator=g) + 0.5
        shift = torch.randn(args.batch, c, 1, 1, device=dev, generator=g)
        ref = F.avg_pool2d(h.contiguous(), 2)
        variants = {"avg_pool2d channels_last": lambda h=h: F.avg_pool2d(h, 2),
                    "avg_pool2d NCHW (input converted)": lambda h=h: F.avg_pool2d(h.contiguous(), 2),
                    "NHWC view mean": lambda h=h: pool_2x2_nhwc(h),
                    "NHWC strided adds": lambda h=h: pool_nhwc_adds(h),
                    "addcmul + relu_ (before the pool)": lambda h=h, s=scale, t=shift: torch.addcmul(
                        -t, h, s).relu_()}
        for name, fn in variants.items():
            out = fn()
            err = None if "relu" in name else float((out.float() - ref).norm() / ref.norm())
            rows.append({"shape": [args.batch, c, px, px], "variant": name, "s": _time(fn, dev), "rel_err": err})
            print(f"{str([args.batch, c, px, px]):<22} {name:<36} {rows[-1]['s'] * 1e3:8.3f} ms  "
                  f"rel.err {'-' if err is None else f'{err:.1e}'}", flush=True)
    res = {"benchmark": "pool_variants", "device": str(dev), "torch": torch.__version__,
           "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None, "rows": rows}
    write_json(args.out, res, indent=1)
    return res


if __name__ == "__main__":
    main()
