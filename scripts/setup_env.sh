#!/usr/bin/env bash
# Set up a Python environment for this project and activate it (source this file).
#
# - Inside an active virtualenv/conda env: use it as it is.
# - Otherwise create ./.venv; if the calling python already has torch, the venv sees it
#   (--system-site-packages), so your own (e.g. CUDA) torch is kept.
# - Where no torch is importable, install torch==2.13.0 (the CPU build on these machines)
#   rather than letting pip pull a multi-GB CUDA build.
# - Install this package (editable, built against that torch, no build isolation); the C++
#   NMS extension is compiled when a compiler is present and skipped, with a note, otherwise.
set -e
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"

if [[ -z "${VIRTUAL_ENV:-}" && -z "${CONDA_PREFIX:-}" ]]; then
  if [[ ! -x "$ROOT/.venv/bin/python" ]]; then
    if "$PY" -c "import torch" >/dev/null 2>&1; then
      echo "[setup] creating .venv (reusing the torch of $PY)"
      "$PY" -m venv --system-site-packages "$ROOT/.venv"
    else
      echo "[setup] creating .venv"
      "$PY" -m venv "$ROOT/.venv"
    fi
  fi
  # shellcheck disable=SC1091
  source "$ROOT/.venv/bin/activate"
fi

if ! python -c "import torch" >/dev/null 2>&1; then
  echo "[setup] no torch found: installing torch==2.13.0"
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q --upgrade "setuptools>=64" wheel
# extras: ACTIONFORMER_EXTRAS (default "test"; run_tests.sh adds "video" for the video tests)
python -m pip install -q --no-build-isolation -e "$ROOT[${ACTIONFORMER_EXTRAS:-test}]"
python - <<'PY'
import torch
from libs.utils.nms import cpp_nms_available
print(f"[setup] torch {torch.__version__}; C++ NMS extension: "
      f"{'built' if cpp_nms_available() else 'not available (pure-PyTorch NMS in use)'}")
PY
