#!/usr/bin/env bash
# Set up the environment (see setup_env.sh) and run the whole test suite.
set -e
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# the video extra too, so that the video tests run rather than skip
ACTIONFORMER_EXTRAS="${ACTIONFORMER_EXTRAS:-test,video}" source scripts/setup_env.sh
# Where a C++ compiler exists the extension must have been built, so that the
# C++-vs-PyTorch NMS tests never skip silently.
if command -v "${CXX:-c++}" >/dev/null 2>&1; then
  python -c "from libs.utils.nms import cpp_nms_available; import sys; sys.exit(0 if cpp_nms_available() else 1)" || {
    echo "ERROR: a C++ compiler is present but the NMS extension did not build (see the pip output above)" >&2
    exit 1
  }
fi
python -m pytest tests -q "$@"
