"""heap.keep_freed_memory: glibc's malloc told to keep freed memory (trace commands); elsewhere, nothing."""
import platform
import subprocess
import sys


def test_glibc_takes_the_settings_and_others_are_left_alone():
    code = "from cgwatch.heap import keep_freed_memory; print(keep_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(platform.libc_ver()[0] == "glibc")
