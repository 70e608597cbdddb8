"""`mediafm worker` holds its threads' allocations in two glibc malloc arenas (mediafm/cli.py `_two_malloc_arenas`),
unless the operator sets MALLOC_ARENA_MAX. Checked in fresh processes, by glibc's own count of its heaps
(malloc_info) after eight threads have allocated."""

import ctypes.util
import os
import platform
import subprocess
import sys

import pytest
from conftest import REPO

PROBE = r"""
import ctypes, ctypes.util, os, sys, tempfile, threading
if sys.argv[1] == "worker":
    from mediafm.cli import _two_malloc_arenas
    _two_malloc_arenas()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
together = threading.Barrier(9)
def allocate():
    held = [ctypes.create_string_buffer(4096) for _ in range(200)]  # malloc'd, below the mmap threshold
    together.wait()  # all eight hold theirs at once: each thread that finds its arena busy wants another
ts = [threading.Thread(target=allocate) for _ in range(8)]
[t.start() for t in ts]
together.wait()
[t.join() for t in ts]
fd, path = tempfile.mkstemp()
libc.fdopen.restype = ctypes.c_void_p
f = libc.fdopen(fd, b"w")
libc.malloc_info(0, ctypes.c_void_p(f))
libc.fclose(ctypes.c_void_p(f))
print(open(path).read().count("<heap nr="))
os.unlink(path)
"""

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not ctypes.util.find_library("c"),
                                reason="malloc arenas are glibc's")


def heaps(mode: str, **env: str) -> int:
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    r = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, cwd=REPO, env=environ,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


def test_the_worker_allocates_in_two_arenas_unless_the_operator_says_otherwise():
    assert heaps("plain") > 2  # the probe sees glibc's default: an arena for each thread that found one busy
    assert heaps("worker") <= 2
    assert heaps("worker", MALLOC_ARENA_MAX="4") in (3, 4)  # the operator's value wins
