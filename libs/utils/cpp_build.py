"""Compile the C++ NMS extension on first use, into torch's extension cache.

``pip install -e .`` with build isolation (pip's default) cannot build the extension against
the installed torch, so it is skipped there. When a C++ compiler is present, the source shipped
in ``libs/utils/csrc`` is compiled once (about a minute) into
``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``) under a name that encodes the
source, torch and Python versions, and loaded from there on later runs. The build runs
setuptools in a subprocess (no ninja needed) and moves the finished library into place
atomically, so concurrent processes (e.g. DDP ranks) never load a half-written file.
"""
from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from types import ModuleType
from typing import Optional

import torch

__all__ = ["jit_extension_path", "load_or_build"]

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "nms_cpu.cpp")

# runs in a fresh interpreter: setuptools + torch's build_ext, plain compiler calls
_BUILD_SCRIPT = """
import sys
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension
src, out, name = sys.argv[1:4]
setup(name=name, ext_modules=[CppExtension(name, [src], extra_compile_args=["-O3"])],
      cmdclass={"build_ext": BuildExtension.with_options(use_ninja=False)},
      script_args=["-q", "build_ext", "--build-lib", out, "--build-temp", out + "/tmp"])
"""


def _module_name() -> str:
    """Extension name tied to the source, torch and Python, so a stale build is never loaded."""
    digest = hashlib.sha1()
    with open(SOURCE, "rb") as f:
        digest.update(f.read())
    digest.update(f"{torch.__version__} {sys.version}".encode())
    return f"actionformer_nms_{digest.hexdigest()[:12]}"


def jit_extension_path() -> str:
    """Where the compiled extension lives (or will live) in torch's extension cache."""
    from torch.utils.cpp_extension import get_default_build_root
    name = _module_name()
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    return os.path.join(root, name,
                        name + sysconfig.get_config_var("EXT_SUFFIX"))


def _import_from(path: str) -> ModuleType:
    name = os.path.basename(path).split(".")[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compile(path: str) -> None:
    """Build the extension in a private temporary folder, then move it to ``path``."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        proc = subprocess.run([sys.executable, "-c", _BUILD_SCRIPT, SOURCE, tmp,
                               _module_name()], capture_output=True, text=True, timeout=900)
        built = glob.glob(os.path.join(tmp, _module_name() + "*"))
        if proc.returncode != 0 or not built:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"compiling {SOURCE} failed: {tail[0]}")
        os.replace(built[0], path)


def load_or_build() -> Optional[ModuleType]:
    """The extension from torch's cache, compiled first if needed; None without a compiler.

    Raises RuntimeError when a compiler exists but the build or the import fails.
    """
    path = jit_extension_path()
    if not os.path.exists(path):
        compiler = os.environ.get("CXX", "c++")
        if not os.path.exists(SOURCE) or shutil.which(compiler) is None:
            return None
        sys.stderr.write(f"libs.utils.nms: compiling the C++ NMS extension once into "
                         f"{os.path.dirname(path)} (about a minute)\n")
        _compile(path)
    try:
        return _import_from(path)
    except ImportError as exc:
        raise RuntimeError(f"loading {path} failed: {exc}") from exc
