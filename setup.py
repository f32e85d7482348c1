"""Install the ``libs`` package and, when a C++ compiler is present, the NMS extension.

The extension is optional: with no compiler, or when the build fails (or is skipped, as in an
isolated build), the install still succeeds; ``libs.utils.nms`` then compiles it on first use
when a compiler exists (``libs/utils/cpp_build.py``), else uses its pure-PyTorch NMS.
Build against the torch already installed: ``pip install --no-build-isolation -e .``
"""
import os
import sys

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

EXT_NAME = "libs.utils._nms_cpp"
EXT_SOURCE = "libs/utils/csrc/nms_cpu.cpp"


_FIRST_USE = ("It is compiled on first use when a compiler exists, else the PyTorch NMS is used "
              "(see INSTALL.md).")


def _banner(msg: str) -> None:
    line = "=" * 78
    sys.stderr.write(f"\n{line}\n{msg}\n{line}\n")


class OptionalBuildExt(build_ext):
    """build_ext that never fails the install: a failed compile means the torch fallback."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure must not block the install
            _banner(f"NOTE: the C++ NMS extension was not built ({exc}).\n" +
                    _FIRST_USE)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            _banner(f"NOTE: the C++ NMS extension failed to compile ({exc}).\n" +
                    _FIRST_USE)


def _extensions():
    if os.environ.get("ACTIONFORMER_NO_EXT") == "1":
        _banner("ACTIONFORMER_NO_EXT=1: skipping the C++ NMS extension at install time.")
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        _banner("NOTE: torch is not importable at build time, so the C++ NMS extension was "
                "skipped.\n"
                "It is compiled on first use instead (see INSTALL.md), or install torch first and\n"
                "run `pip install --no-build-isolation -e .` to build it now.")
        return [], {}

    class OptionalTorchBuildExt(BuildExtension, OptionalBuildExt):
        pass

    ext = CppExtension(EXT_NAME, [EXT_SOURCE], extra_compile_args=["-O3"])
    return [ext], {"build_ext": OptionalTorchBuildExt}


ext_modules, cmdclass = _extensions()

setup(
    name="actionformer",
    version="0.1.0",
    description="ActionFormer temporal action localization: a faithful, fast re-implementation",
    packages=find_packages(include=["libs", "libs.*"]),
    package_data={"libs.utils": ["csrc/*.cpp"]},
    python_requires=">=3.9",
    install_requires=["numpy", "pyyaml", "tensorboard", "pandas", "h5py", "tqdm", "matplotlib"],
    extras_require={"test": ["pytest"],
                    # tools/extract_features.py and predict.py on video files (libs.video)
                    "video": ["av", "torchvision==0.28.0", "opencv-contrib-python-headless"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
