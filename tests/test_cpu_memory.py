"""The allocator setting of train.py / eval.py: freed memory is reused, not faulted in again."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = """
import resource, sys, torch
from libs.utils.cpu_memory import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "1" else False

def step():                                   # a "training step": 4 x 16 MiB activations
    return sum(float(t[0]) for t in [torch.ones(4 << 20) for _ in range(4)])

step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(apply: bool, env_extra=None):
    # glibc's default threshold adapts to the sizes freed so far, so that the fault count
    # varies from run to run; start every run from the fixed 128 KiB threshold instead
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update({"MALLOC_MMAP_THRESHOLD_": "131072", **(env_extra or {})})
    out = subprocess.run([sys.executable, "-c", _SCRIPT, "1" if apply else "0"], cwd=ROOT,
                         env=env, check=True, capture_output=True, text=True).stdout.split()
    return out[0] == "True", int(out[1])


def test_freed_memory_is_reused_without_page_faults():
    applied, faults = _page_faults(True)
    if not applied:
        pytest.skip("not glibc: the allocator is left alone")
    _, default_faults = _page_faults(False)
    pages = 5 * 4 * (16 << 20) // 4096                 # every page of every step, once
    assert default_faults > pages * 9 // 10            # every block mapped and faulted again
    assert faults < pages // 4                         # reused: a few blocks at most


def test_opt_out_keeps_the_defaults():
    applied, faults = _page_faults(True, {"ACTIONFORMER_DEFAULT_MALLOC": "1"})
    assert not applied
