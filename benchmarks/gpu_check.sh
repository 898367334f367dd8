#!/usr/bin/env bash
# The GPU check: one script, about 8 minutes at most on one H200, that runs
#   1. the gpu-marked tests (tests/test_gpu.py: every stage on the device, one read-back per iteration,
#      memory released, seeded determinism),
#   2. benchmarks/speed.py: ddflow's batched steps against the reference-style per-class loop (target >= 3x),
#      with a profile of 3 iterations of each (device busy time, kernel launches, the top ops: OUT/profile_*.txt),
#   3. benchmarks/gpu_distill.py: a short Fashion-MNIST DM and NCFM run at the published per-iteration settings,
# and writes OUT/gpu_check.json (each step's exit code and seconds, the device, and the figures of 2 and 3).
#
#   benchmarks/gpu_check.sh [--out DIR] [--wheels DIR]      # on the GPU machine (DIR default benchmarks/results/gpu_check)
#   benchmarks/gpu_check.sh --dry-run                       # the same steps on the CPU at tiny sizes (CI)
#
# --wheels DIR installs the wheels in DIR (make gpu-wheels: the packages the GPU image lacks) into a private
# target folder first. Fashion-MNIST is read from .data/fashion-mnist when present (make gpu-data), else from
# DDFLOW_FASHION_MNIST or the Debian package's folder. Exit status: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
OUT_DIR=benchmarks/results/gpu_check
WHEELS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT_DIR="$2"; shift ;;
    --wheels) WHEELS="$2"; shift ;;
    *) echo "gpu_check.sh: unknown argument '$1'; use --dry-run, --out DIR or --wheels DIR" >&2; exit 2 ;;
  esac
  shift
done

PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
SITE=""
if [ -n "$WHEELS" ]; then
  SITE=$(mktemp -d /tmp/ddflow-site.XXXXXX)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl \
    || { echo "gpu_check.sh: installing the wheels in $WHEELS failed; rebuild them with 'make gpu-wheels'" >&2; exit 2; }
fi
export PYTHONPATH="${SITE:+$SITE:}$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d .data/fashion-mnist ] && export DDFLOW_FASHION_MNIST="$PWD/.data/fashion-mnist"
export PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=:4096:8 HF_HUB_OFFLINE=1

if [ "$DRY" = 1 ]; then
  DEV=cpu
  SPEED_ARGS=(--iterations 2 --ipc 1 --batch-real 16 --num-freqs 64 --methods dm,ncfm --profile)
  DISTILL_ARGS=(--dry-run)
  LIMITS=(300 120 180)
else
  DEV=cuda
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "gpu_check.sh: torch sees no CUDA device here; run with --dry-run on a CPU machine" >&2; exit 2; }
  SPEED_ARGS=(--iterations 10 --ipc 10 --batch-real 256 --num-freqs 4096 --methods dm,hdd,ncfm --embed-table --profile)
  DISTILL_ARGS=(--iterations 500 --epochs 300 --num-eval 2)
  LIMITS=(100 140 230)
fi
export DDFLOW_TEST_DEVICE=$DEV
mkdir -p "$OUT_DIR"
STEPS_TSV="$OUT_DIR/steps.tsv"
: > "$STEPS_TSV"
FAILED=0

step() {  # step NAME LIMIT_S CMD...: run CMD under a time limit, its output in OUT/NAME.log
  local name=$1 limit=$2; shift 2
  local t0 rc
  t0=$(date +%s%N)
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  rc=$?
  tail -n 15 "$OUT_DIR/$name.log"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( ($(date +%s%N) - t0) / 1000000 ))" >> "$STEPS_TSV"
  [ "$rc" = 0 ] || FAILED=1
}

"$PY" - > "$OUT_DIR/env.json" <<'EOF'
import json, os, platform, torch
cuda = torch.cuda.is_available()
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                  "device": torch.cuda.get_device_name(0) if cuda else None, "cpus": os.cpu_count(),
                  "loadavg": os.getloadavg(), "test_device": os.environ["DDFLOW_TEST_DEVICE"]}))
EOF

# -W default: the device image's other torch and package versions may warn where CI's do not; warnings stay
# errors in CI (pyproject), here they are shown, so that a deprecation does not read as a device failure
step gpu_tests "${LIMITS[0]}" "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider -W default \
  --junitxml "$OUT_DIR/gpu_tests.xml"
step speed "${LIMITS[1]}" "$PY" -m benchmarks.speed --device "$DEV" "${SPEED_ARGS[@]}" --out "$OUT_DIR/speed.json"
step gpu_distill "${LIMITS[2]}" "$PY" -m benchmarks.gpu_distill --device "$DEV" "${DISTILL_ARGS[@]}" \
  --out "$OUT_DIR/gpu_distill.json"

"$PY" - "$OUT_DIR" "$DRY" <<'EOF'
import json, sys
from pathlib import Path
out, dry = Path(sys.argv[1]), sys.argv[2] == "1"
steps = [dict(zip(("step", "rc", "seconds"), line.split("\t"))) for line in (out / "steps.tsv").read_text().splitlines()]
for s in steps:
    s["rc"], s["seconds"] = int(s["rc"]), round(int(s["seconds"]) / 1000, 1)
def read(name):
    p = out / name
    return json.loads(p.read_text()) if p.exists() else None
speed = read("speed.json")
result = {"benchmark": "gpu_check", "dry_run": dry, "env": read("env.json"), "steps": steps,
          "passed": all(s["rc"] == 0 for s in steps),
          "speedup": {r["method"]: round(r["speedup"], 2) for r in speed["rows"]} if speed else None,
          "speed": speed, "distill": read("gpu_distill.json")}
(out / "gpu_check.json").write_text(json.dumps(result, indent=1))
print(f"\n{'step':<12} {'rc':>3} {'seconds':>8}")
for s in steps:
    print(f"{s['step']:<12} {s['rc']:>3} {s['seconds']:>8}")
print(f"speed-up over the per-class loop: {result['speedup']}")
print(f"wrote {out / 'gpu_check.json'}")
EOF
exit $FAILED
