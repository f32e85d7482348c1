#!/usr/bin/env bash
# The GPU checks, as one script for a CUDA machine with torch installed (no network needed):
# build the NMS extension in place, run the whole test suite (CUDA tests included), the
# benchmark (reference formulation vs fast paths; fp32 / bf16 / fp16) and the demo on the GPU.
# Logs go to $OUT (default ./gpu_checks/).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/gpu_checks}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
"$PY" setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1
"$PY" -c "from libs.utils.nms import cpp_nms_available as a; print('C++ NMS extension:', a())" | tee -a "$OUT/gpu.txt"
echo "== tests"; "$PY" -m pytest tests -q -p no:cacheprovider ${TESTS_ARGS:-} 2>&1 | tee "$OUT/tests.log" | tail -15
echo "== benchmark"; "$PY" tools/benchmark.py --device cuda ${BENCH_ARGS:-} 2>&1 | tee "$OUT/benchmark.log"
echo "== demo"
"$PY" tools/make_demo_data.py --out data/demo > /dev/null
start=$(date +%s)
"$PY" train.py configs/demo.yaml --output demo_gpu --device cuda 2>&1 | tail -3 | tee "$OUT/demo.log"
"$PY" eval.py configs/demo.yaml ckpt/demo_demo_gpu --device cuda 2>&1 | tail -4 | tee -a "$OUT/demo.log"
echo "demo train+eval wall time: $(( $(date +%s) - start )) s" | tee -a "$OUT/demo.log"
