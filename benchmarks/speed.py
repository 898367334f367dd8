"""Seconds per distillation iteration and peak memory: ddflow's batched steps vs per-class loops.

Both run side by side in one process on the same real data (Fashion-MNIST when installed, else
generated 1x28x28 data), same networks, augmentation and losses; iterations alternate between the
two implementations so machine load affects both equally. Reported per method: the median seconds
per iteration of each, their ratio (``speedup``), the median of the per-iteration ratios (``paired``,
steadier on a loaded machine), and the memory each step adds at its peak (CUDA: allocator peak; Linux
CPU: peak resident set, reset before every step). Prints a table, writes JSON.

Usage: ``python -m benchmarks.speed [--iterations 5] [--methods dm,hdd,ncfm] [--ipc 10] [--batch-real 256]
[--device cpu] [--embed-table] [--profile]``
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from benchmarks import write_json
from benchmarks.reference_loops import ReferenceStyleStep
from ddcore.distill.config import DistillConfig
from ddcore.distill.init import initial_images
from ddcore.distill.matching import MatchingStep
from ddcore.distill.ncfm import NCFMStep
from ddcore.nets.fast import fast_embed, prepare
from ddcore.sampling import TensorSampler, on_device
from ddcore.seeding import IterationRng, iteration_generator


def real_sampler() -> tuple[TensorSampler, str]:
    try:
        from ddcore.data.sources.idx import FashionMNISTSource

        src = FashionMNISTSource()
        x, y = src._arrays["train"]
        xt = torch.from_numpy(x[:, None].astype("float32") / 255.0)
        mean, std = float(xt.mean()), float(xt.std())
        labels = torch.from_numpy(y.astype("int64"))
        return TensorSampler((xt - mean) / std, labels, 10, (mean,), (std,)), "fashion-mnist"
    except Exception:  # noqa: BLE001 - fall back to generated data of the same format
        g = torch.Generator().manual_seed(0)
        x = torch.randn(10 * 600, 1, 28, 28, generator=g)
        return TensorSampler(x, torch.arange(10).repeat_interleave(600), 10, (0.0,), (1.0,)), "generated"


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak(device: torch.device) -> float | None:
    """Reset the peak-memory counter; returns the memory in use now (MiB), None if unmeasurable."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    try:  # Linux: writing 5 to clear_refs resets VmHWM (the peak resident set) to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    rss = _proc_status_kb("VmRSS")
    return None if rss is None else rss / 1024


def _peak_since_reset(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    hwm = _proc_status_kb("VmHWM")
    return None if hwm is None else hwm / 1024


def timed_step(step, syn0: torch.Tensor, labels: torch.Tensor, cfg: DistillConfig, it: int,
               device: torch.device) -> tuple[float, float | None]:
    """Seconds for iteration ``it`` of ``step`` and the memory it added at its peak (MiB, None if unknown).

    Each call starts from ``syn0`` with a fresh optimiser, so both implementations do identical work.
    """
    syn = syn0.clone().to(device).requires_grad_(True)
    opt = (torch.optim.AdamW([syn], lr=cfg.lr_img) if cfg.method == "ncfm"
           else torch.optim.SGD([syn], lr=cfg.lr_img, momentum=cfg.momentum))
    # ddflow's steps take the iteration's random streams; the reference-style loop one generator
    rng = iteration_generator(cfg.seed, it) if isinstance(step, ReferenceStyleStep) else IterationRng(cfg.seed, it)
    if isinstance(step, ReferenceStyleStep):  # ddflow's steps take host labels (ddcore/distill/batches.py)
        labels = labels.to(device)
    base = _reset_peak(device)
    t0 = time.perf_counter()
    step(syn, labels, opt, rng)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    peak = _peak_since_reset(device)
    return seconds, (None if base is None or peak is None else peak - base)


def _median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else 0.5 * (v[len(v) // 2 - 1] + v[len(v) // 2])


def profile_step(step, syn0: torch.Tensor, labels: torch.Tensor, cfg: DistillConfig, device: torch.device,
                 table: Path, its: int = 3) -> dict:
    """Profile ``its`` iterations of ``step`` (torch.profiler): per iteration, the wall seconds, the seconds the
    device ran kernels and copies, and the kernel launches; the top-25 op table goes to ``table``. Device time
    well under the wall time with many launches means the step is bound by the host, not the GPU. The table is
    sorted by device time and again by host time (CUDA), by host time alone on the CPU."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for it in range(its):
            timed_step(step, syn0, labels, cfg, 1000 + it, device)
    wall = (time.perf_counter() - t0) / its
    avg = prof.key_averages()
    launches = sum(e.count for e in avg if e.key.startswith(("cudaLaunchKernel", "cuLaunchKernel"))) / its
    # the kernels, copies and fills themselves (an aten op's row repeats its kernels' device time)
    device_s = sum(e.self_device_time_total for e in avg if e.device_type == DeviceType.CUDA) / its / 1e6
    table.parent.mkdir(parents=True, exist_ok=True)
    sorts = ["self_device_time_total", "self_cpu_time_total"] if cuda else ["self_cpu_time_total"]
    table.write_text("\n\n".join(f"sorted by {k}:\n{avg.table(sort_by=k, row_limit=25)}" for k in sorts))
    return {"wall_s_per_it": wall, "device_s_per_it": device_s if cuda else None,
            "launches_per_it": launches if cuda else None, "table": table.name}


def embed_table(sampler: TensorSampler, cfg: DistillConfig, device: torch.device, its: int) -> list[dict]:
    """Real-side embedding only (no grad), all classes' ``batch_real`` images: net.embed per class (as
    the reference), fast_embed float32 (ddflow's default), and fast_embed bfloat16 (opt-in, changes
    numerics: relative feature error reported)."""
    c, h, _ = sampler.image_shape
    spec = cfg.network_spec
    net = spec.build(channels=c, num_classes=sampler.num_classes, image_size=h, seed=cfg.seed).to(device)
    net.requires_grad_(False)
    fast = prepare(spec.build(channels=c, num_classes=sampler.num_classes, image_size=h, seed=cfg.seed))
    fast = fast.to(device).requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    per_class = [sampler.sample(k, cfg.batch_real, g).to(device) for k in range(sampler.num_classes)]
    x = torch.cat(per_class)
    impls = {"net.embed per class": lambda: torch.cat([net.embed(b) for b in per_class]),
             "fast_embed float32": lambda: fast_embed(fast, x),
             "fast_embed bfloat16 (opt-in)": lambda: fast_embed(fast, x, real_dtype=torch.bfloat16)}
    times: dict[str, list[float]] = {n: [] for n in impls}
    outs: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for n, f in impls.items():  # warm-up
            outs[n] = f()
        for _ in range(its):
            for n, f in impls.items():
                t0 = time.perf_counter()
                f()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[n].append(time.perf_counter() - t0)
    ref = outs["net.embed per class"]
    return [{"embedding": n, "s": _median(t), "speedup": _median(times["net.embed per class"]) / _median(t),
             "rel_err": float((outs[n] - ref).norm() / ref.norm())} for n, t in times.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--batch-real", type=int, default=256)
    ap.add_argument("--num-freqs", type=int, default=1024)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--methods", default="dm,hdd,ncfm")
    ap.add_argument("--out", default="benchmarks/results/speed.json")
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="let cuDNN time its algorithms per shape (torch.backends.cudnn.benchmark)")
    ap.add_argument("--profile", action="store_true",
                    help="also profile 3 iterations of each step (device busy time, kernel launches, op table)")
    ap.add_argument("--embed-table", action="store_true",
                    help="also time the real-side embedding alone, including the opt-in bfloat16 path")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    sampler, data = real_sampler()
    sampler = on_device(sampler, dev)  # on a GPU both steps gather real batches there, as the reference code does
    rows = []
    for method in args.methods.split(","):
        extra = ({"ncfm": {"num_freqs": args.num_freqs, "factor": 1}, "lr_img": 1e-3, "init": "real"}
                 if method == "ncfm" else {})
        cfg = DistillConfig(method=method, ipc=args.ipc, batch_real=args.batch_real, iterations=args.iterations,
                            **extra)
        labels = torch.arange(10).repeat_interleave(args.ipc)
        syn0 = initial_images(sampler, ipc=args.ipc, init="real", seed=0)
        impls = {"ddflow": (MatchingStep if method != "ncfm" else NCFMStep)(sampler, cfg, dev),
                 "per-class": ReferenceStyleStep(sampler, cfg, dev)}
        for step in impls.values():  # warm-up (oneDNN primitive caches, allocator)
            timed_step(step, syn0, labels, cfg, 0, dev)
        times: dict[str, list[float]] = {n: [] for n in impls}
        peaks: dict[str, list[float]] = {n: [] for n in impls}
        for it in range(1, args.iterations + 1):
            for name, step in impls.items():  # alternate, same iteration, so load hits both alike
                sec, peak = timed_step(step, syn0, labels, cfg, it, dev)
                times[name].append(sec)
                if peak is not None:
                    peaks[name].append(peak)
        if args.profile:
            prof = {name: profile_step(step, syn0, labels, cfg, dev,
                                       Path(args.out).with_name(f"profile_{method}_{name}.txt"))
                    for name, step in impls.items()}
        med = {n: _median(t) for n, t in times.items()}
        paired = _median([r / d for d, r in zip(times["ddflow"], times["per-class"], strict=True)])
        rows.append({"method": method, "ddflow_s_per_it": med["ddflow"], "per_class_s_per_it": med["per-class"],
                     "speedup": med["per-class"] / med["ddflow"], "paired_speedup_median": paired,
                     "ddflow_peak_mb": max(peaks["ddflow"], default=None),
                     "per_class_peak_mb": max(peaks["per-class"], default=None), "times": times,
                     **({"profile": prof} if args.profile else {})})
    res = {"benchmark": "speed", "device": str(dev), "data": data, "ipc": args.ipc, "batch_real": args.batch_real,
           "threads": torch.get_num_threads(), "cudnn_benchmark": args.cudnn_benchmark, "machine": platform.machine(),
           "torch": torch.__version__,
           "peak_mb_note": "memory a step adds at its peak over what was in use before it (CPU: VmHWM - VmRSS)",
           "rows": rows}
    print(f"{'method':<6} {'ddflow s/it':>12} {'per-class s/it':>15} {'speedup':>8} {'paired':>7} "
          f"{'ddflow MiB':>11} {'per-class MiB':>14}")
    for r in rows:
        mem = [f"{m:.0f}" if m is not None else "n/a" for m in (r["ddflow_peak_mb"], r["per_class_peak_mb"])]
        print(f"{r['method']:<6} {r['ddflow_s_per_it']:>12.3f} {r['per_class_s_per_it']:>15.3f} {r['speedup']:>7.2f}x "
              f"{r['paired_speedup_median']:>6.2f}x {mem[0]:>11} {mem[1]:>14}")
    for r in rows if args.profile else []:
        for name, pr in r["profile"].items():
            busy = "" if pr["device_s_per_it"] is None else (
                f", device busy {pr['device_s_per_it']:.4f} s, {pr['launches_per_it']:.0f} launches")
            print(f"profile {r['method']:<5} {name:<9}: wall {pr['wall_s_per_it']:.4f} s/it{busy}")
    if args.embed_table:
        res["embedding"] = embed_table(sampler, DistillConfig(method="dm", ipc=args.ipc, batch_real=args.batch_real),
                                       dev, args.iterations)
        print(f"\n{'real-side embedding (no grad)':<30} {'s':>7} {'speedup':>8} {'rel. err':>9}")
        for r in res["embedding"]:
            print(f"{r['embedding']:<30} {r['s']:>7.3f} {r['speedup']:>7.2f}x {r['rel_err']:>9.1e}")
    write_json(args.out, res)


if __name__ == "__main__":
    main()
