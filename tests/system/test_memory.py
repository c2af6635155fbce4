"""The C allocator's setting made at start-up (system/memory.py)."""

import subprocess
import sys

from lafs_backup.system.memory import limit_arenas


def test_glibc_takes_the_arena_limit():
    assert limit_arenas(2) is True


def test_the_limit_holds_in_a_process_that_then_allocates_on_threads():
    # A fresh interpreter: the limit is set, then eight threads each allocate and free; the process
    # still runs to its end (a refused or misread setting would show as False, or as a crash).
    code = ("from lafs_backup.system.memory import limit_arenas\n"
            "import threading\n"
            "ok = limit_arenas(1)\n"
            "def work():\n"
            "    for _ in range(200):\n"
            "        b = [bytes(4096) for _ in range(100)]\n"
            "ts = [threading.Thread(target=work) for _ in range(8)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n"
            "print(ok)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
