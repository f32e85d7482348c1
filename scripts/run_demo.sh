#!/usr/bin/env bash
# Set up the environment, generate the synthetic demo data set, train on it, evaluate.
set -e
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup_env.sh
python tools/make_demo_data.py --out data/demo
python train.py configs/demo.yaml --output demo --device cpu --force   # --force: start over on a re-run
python eval.py configs/demo.yaml ckpt/demo_demo --device cpu
