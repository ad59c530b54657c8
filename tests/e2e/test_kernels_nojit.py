"""End to end (subprocesses, torchrun, a browser, DVC, the Groove data or the slowest runs):
The kernels' Python bodies (NUMBA_DISABLE_JIT=1) against their numpy twins: what numba compiles is
then ordinary Python, visible to coverage and debuggers, and an error numba's typing would hide in
compiled code (or a branch only the interpreter takes) fails here. A fresh interpreter, because
numba reads the variable at import..
The rest is tests/unit/test_kernels_nojit.py."""
import os
import subprocess
import sys

from common.config import REPO_ROOT

NOJIT = {**os.environ, "NUMBA_DISABLE_JIT": "1", "HIERDRUMS_KERNEL_EXAMPLES": "6",
         "PYTHONPATH": str(REPO_ROOT)}


def test_kernels_are_plain_python_under_numba_disable_jit():
    code = ("import kernels.codes as c, kernels.song as s\n"
            "assert not hasattr(c.densify, 'py_func') and not hasattr(s._entropy_of_ids, 'py_func')\n"
            "print('python')")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=NOJIT, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "python", r.stderr


def test_kernel_vs_reference_tests_pass_with_the_python_bodies():
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        "tests/unit/test_kernels.py"], cwd=REPO_ROOT, env=NOJIT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout



def test_corpus_kernels_as_python_make_the_same_songs():
    # The built-in corpus's numba kernels (pipeline.corpus._assemble ...) run as plain Python give
    # the same songs bit for bit: the float32/float64 steps are written out, not left to numba's typing.
    code = ("import sys\n"
            "from tests.unit.test_corpus import VARIANT, _corpus_hash\n"
            "from pipeline.corpus import _assemble, generate_corpus\n"
            "print(hasattr(_assemble, 'py_func'), _corpus_hash(generate_corpus(12, 0)),"
            " _corpus_hash(generate_corpus(12, 7, **VARIANT)))")
    python, jit = (subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env={**NOJIT, "NUMBA_DISABLE_JIT": flag},
                                  capture_output=True, text=True) for flag in ("1", "0"))
    assert python.returncode == 0 and jit.returncode == 0, python.stderr[-2000:] + jit.stderr[-2000:]
    assert python.stdout.split()[0] == "False" and jit.stdout.split()[0] == "True"
    assert python.stdout.split()[1:] == jit.stdout.split()[1:]
