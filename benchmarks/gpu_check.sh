#!/usr/bin/env bash
# The one prepared GPU check: one call, about 6 minutes on a fresh H200 (at most 8: the driver keeps to
# a 460 s budget). Run from the repository root with the device kit carried as .gpu/ (lightly, kornia,
# kornia_rs wheels; HAM10000 images/masks/labels.csv in .gpu/ham10000 for the 224 px benches):
#     python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl && \
#       export PYTHONPATH=/tmp/site:$PWD && bash benchmarks/gpu_check.sh
#     DRY_RUN=1 bash benchmarks/gpu_check.sh      # (or --dry-run) every step on the CPU at tiny sizes
# Writes only $OUT/summary.json (every step: status, seconds, expected GPU seconds, figures, error tail)
# and $OUT/log.txt (all output); caches, checkpoints and runs stay under $WORK (default /tmp/gpu_check).
# Each step runs in its own process under `timeout`; a failing step is recorded and the next one runs.
# Expected on a fresh H200 (in brackets: the dry run measured on 2 CPU cores shared with other work,
# 550 s in all, its timeouts 4x the GPU's):
#   env 10 s [15 s] | compile 240 s in the background, beside the next three [480 s] | methods 90 s [100 s]
#   | kill_resume 45 s [295 s] | ddp 60 s [85 s] | throughput 80 s [24 s] | finetune_path 45 s [30 s]
set -u
OUT=${OUT:-runs/gpu_check}
WORK=${WORK:-/tmp/gpu_check}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=${PYTHONPATH:-$PWD}
case ":$PYTHONPATH:" in *":$PWD:"*) ;; *) export PYTHONPATH=$PYTHONPATH:$PWD ;; esac
DRY=""
if [ "${DRY_RUN:-0}" = "1" ] || [ "${1:-}" = "--dry-run" ]; then DRY="--dry-run"; fi
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; } >"$OUT/log.txt"
timeout -k 10 "${BUDGET_S:-470}" python3 benchmarks/gpu_check.py --out "$OUT" --work "$WORK" $DRY \
  --budget "$(( ${BUDGET_S:-470} - 10 ))" ${ONLY:+--only "$ONLY"} 2>>"$OUT/log.txt"
rc=$?
# a driver that died (or ran out of time) still leaves a summary.json that says so
python3 - "$OUT" "$rc" <<'PY'
import json, os, sys
out, rc = sys.argv[1], int(sys.argv[2])
path = os.path.join(out, "summary.json")
try:
    summary = json.load(open(path))
except Exception as e:
    summary = {"steps": {}, "driver_error": f"summary.json unreadable: {e}"}
summary["driver_rc"] = rc
if rc not in (0, 1):
    log = open(os.path.join(out, "log.txt"), errors="replace").read()
    summary["driver_error"] = ("the driver ran out of time" if rc in (124, 137) else f"the driver exited {rc}")
    summary["driver_tail"] = log[-2500:]
    summary["ok"] = False
json.dump(summary, open(path + ".tmp", "w"), indent=2)
os.replace(path + ".tmp", path)
print(json.dumps({k: v.get("status") for k, v in summary.get("steps", {}).items()}))
PY
exit $rc
