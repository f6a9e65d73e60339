"""Keeping freed CPU memory: the setting, its opt-outs, and that it removes the page faults."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from mtsc.errors import MtscError
from mtsc.runtime.cpu_memory import _is_glibc, keep_freed_memory, set_keeping

needs_glibc = pytest.mark.skipif(not _is_glibc(), reason="mallopt is glibc's")

# Allocates, fills and frees a 64 MiB tensor 16 times; prints the minor page faults of the last
# 4 rounds. glibc maps a block that large afresh each time unless told to keep it; kept, the
# heap takes up to 8 rounds to settle (seen over many runs), as the 64-byte alignment PyTorch
# asks for makes each request a little larger than the block freed before it.
FAULTS_OF_A_REFILL = textwrap.dedent(
    """
    import resource, sys
    import torch
    from mtsc.runtime.cpu_memory import keep_freed_memory
    print(keep_freed_memory(), file=sys.stderr)
    for i in range(16):
        if i == 12:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.ones(16 << 20)
        del x
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)
PAGES_OF_64_MIB = (64 << 20) // os.sysconf("SC_PAGE_SIZE")


def refill_faults(**env: str) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-c", FAULTS_OF_A_REFILL],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and "MALLOC" not in k}
        | env,
    )
    return int(proc.stdout), proc.stderr.strip()


@needs_glibc
@pytest.mark.parametrize("env", [{}, {"MTSC_MALLOC": ""}], ids=["unset", "empty"])
def test_freed_blocks_are_reused_without_page_faults(env):
    faults, kept = refill_faults(**env)
    assert kept == "True"
    assert faults < PAGES_OF_64_MIB // 16


@needs_glibc
@pytest.mark.parametrize(
    "env",
    [
        {"MTSC_MALLOC": "system"},
        {"GLIBC_TUNABLES": "glibc.malloc.check=0"},  # the user's malloc settings stay theirs
        {"MALLOC_TOP_PAD_": "0"},  # glibc's older spelling of one
    ],
    ids=["system", "tunables", "malloc-variable"],
)
def test_otherwise_each_large_block_is_mapped_afresh(env):
    faults, kept = refill_faults(**env)
    assert kept == "False"
    assert faults > 2 * PAGES_OF_64_MIB


def test_a_glibc_that_caps_the_mmap_threshold_stops_mapping_blocks_instead():
    """Before 2.35 glibc refuses mmap thresholds above 32 MiB; mapping can still be turned off."""
    calls = []

    def capped_mallopt(param: int, value: int) -> int:
        calls.append((param, value))
        return 0 if param == -3 and value > 32 << 20 else 1

    assert set_keeping(capped_mallopt)
    assert calls == [(-3, 2**31 - 1), (-4, 0), (-1, 2**31 - 1)]


@needs_glibc
def test_with_mapping_turned_off_freed_blocks_are_reused_too():
    script = FAULTS_OF_A_REFILL.replace(
        "print(keep_freed_memory(), file=sys.stderr)",
        "import ctypes\n"
        "from mtsc.runtime.cpu_memory import set_keeping\n"
        "mallopt = ctypes.CDLL(None).mallopt\n"
        "print(set_keeping(lambda p, v: 0 if p == -3 else mallopt(p, v)), file=sys.stderr)",
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert proc.stderr.strip() == "True"
    assert int(proc.stdout) < PAGES_OF_64_MIB // 16


JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


@needs_glibc
@pytest.mark.skipif(not os.path.exists(JEMALLOC), reason="needs Debian's libjemalloc2")
def test_a_preloaded_malloc_is_left_alone():
    """Under LD_PRELOAD=jemalloc, mallopt still exists (glibc's) but tunes a heap nothing
    allocates from: keep_freed_memory must say it does nothing."""
    proc = subprocess.run(
        [sys.executable, "-c", FAULTS_OF_A_REFILL],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LD_PRELOAD": JEMALLOC},
    )
    assert proc.stderr.strip() == "False"


def test_a_malloc_that_takes_no_setting_is_reported():
    assert not set_keeping(lambda param, value: 0)


def test_an_unknown_setting_is_an_error(monkeypatch):
    monkeypatch.setenv("MTSC_MALLOC", "jemalloc")
    with pytest.raises(MtscError) as err:
        keep_freed_memory()
    assert err.value.message == "MTSC_MALLOC must be one of keep, system, got 'jemalloc'"


def test_the_search_command_reports_an_unknown_setting(run_mtsc, tmp_path, examples_dir):
    out = tmp_path / "run"
    done = run_mtsc(
        "search",
        examples_dir / "resnet_tiny.mtl",
        "--quick",
        "--out",
        out,
        "--no-progress",
        env={"MTSC_MALLOC": "fast"},
    )
    assert done.returncode == 2
    assert done.stderr == "error: MTSC_MALLOC must be one of keep, system, got 'fast'\n"
    assert not (out / "last.pt").exists()
