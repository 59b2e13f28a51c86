#!/usr/bin/env bash
# One prepared GPU check for the engine, for a machine with CUDA.
# Run from the repository root on the GPU machine, with the device kit carried as .gpu/
# (see ../shared/device-kit/README.md: lightly/kornia wheels, optionally .gpu/ham10000):
#     bash benchmarks/gpu_check.sh            # writes everything under $OUT (default: runs/gpu_check)
# Each step logs to its own file; a failing step is recorded and the script goes on.
set -u
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
if ls .gpu/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
PY=${PY:-python3}
DATA=(data.images=[synthetic] data.synthetic_n=2000 data.image_size=96 "data.cache_dir=$OUT/cache")
if [ -d .gpu/ham10000 ]; then
  DATA=(data.images=[.gpu/ham10000/images] data.labels=.gpu/ham10000/labels.csv data.image_size=96 "data.cache_dir=$OUT/cache")
fi
status() { echo "$1: exit $2" | tee -a "$OUT/summary.txt"; }
run() {  # run NAME CMD...: output to $OUT/NAME.log, time and exit code to summary.txt
  local name=$1; shift
  local t0=$(date +%s)
  "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  status "$name ($(( $(date +%s) - t0 )) s)" $rc
}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; "$PY" -c "import torch; print(torch.__version__)"; } \
  >"$OUT/device.txt" 2>&1

# 1. the CUDA tests (engine resume on CUDA, no host syncs, fp16 scaler; presets without syncs)
run cuda_tests "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_augment.py -k "cuda or sync"
# 2. 200 pretraining steps (SimCLR, resnet50, bf16), with a kill-free resume check: 150 then 200
run pretrain_150 "$PY" -m ssl_derm.cli pretrain --config configs/pretrain/simclr_resnet50.yaml --out "$OUT/pretrain" \
  "${DATA[@]}" train.max_steps=150 train.batch_size=128 train.ckpt_every=50 monitor.every_steps=0 device=cuda
run pretrain_200 "$PY" -m ssl_derm.cli pretrain --config configs/pretrain/simclr_resnet50.yaml --out "$OUT/pretrain" \
  "${DATA[@]}" train.max_steps=200 train.batch_size=128 train.ckpt_every=50 monitor.every_steps=0 device=cuda
# 3. a finetune at bf16 and at fp16 (GradScaler), from the encoder just pretrained
for p in bf16 fp16; do
  run "finetune_$p" "$PY" -m ssl_derm.cli finetune --config configs/finetune/finetune.yaml --out "$OUT/finetune_$p" \
    "${DATA[@]}" encoder.name=resnet50 "encoder.checkpoint=$OUT/pretrain/encoder.safetensors" split.fraction=0.25 \
    train.max_steps=300 train.batch_size=64 train.ckpt_every=100 train.precision=$p device=cuda
done
# 4. FixMatch and self-training on the GPU (short)
run fixmatch_bf16 "$PY" -m ssl_derm.cli finetune --config configs/finetune/fixmatch.yaml --out "$OUT/fixmatch" \
  "${DATA[@]}" encoder.name=resnet18 encoder.checkpoint=none train.max_steps=100 train.ckpt_every=50 device=cuda
# 5. train.compile with a momentum teacher: the schedule values stay outside the compiled encoder, so
#    recompilations stay at a handful (TORCH_LOGS=recompiles prints each one into the log)
TORCH_LOGS=recompiles run compile_byol "$PY" -m ssl_derm.cli pretrain --config configs/pretrain/byol_resnet18.yaml \
  --out "$OUT/compile_byol" "${DATA[@]}" train.max_steps=30 train.batch_size=128 train.compile=true \
  monitor.every_steps=0 device=cuda
echo "compile_byol recompilations: $(grep -c 'Recompiling' "$OUT/compile_byol.log")" >>"$OUT/summary.txt"
# 6. throughput: the step ceiling, the full ssl-derm path and lightly's standard pipeline
run throughput "$PY" -m ssl_derm.cli bench throughput --method simclr --encoder resnet50 --image-size 224 \
  --batch-size 256 --out "$OUT/throughput.json"
# 7. the engine's overhead against a bare loop (CPU figure, for the record next to the GPU ones)
run engine_overhead "$PY" benchmarks/engine_overhead.py --steps 100 --repeats 3
grep -h "img/s\|ratio\|balanced_acc\|engine / bare" "$OUT"/*.log >>"$OUT/summary.txt" 2>/dev/null
cat "$OUT/summary.txt"
