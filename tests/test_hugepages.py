"""Huge-page malloc: when the allam command restarts itself with the glibc tunable, and that it does."""

import os
import subprocess
import sys

import pytest

from allam_jax.core import hugepages


def test_adds_the_tunable_and_keeps_the_others(monkeypatch):
    monkeypatch.setattr(hugepages, "_glibc_has_tunable", lambda: True)
    monkeypatch.setattr(hugepages, "_thp_available", lambda: True)
    monkeypatch.setattr(sys, "platform", "linux")
    assert hugepages.hugepage_env({"A": "1"}) == {"A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    env = hugepages.hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("environ", [
    {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},  # the user's own choice wins, and no restart loop
    {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
    {"ALLAM_HUGEPAGES": "0"},
])
def test_no_restart_when_set_or_turned_off(monkeypatch, environ):
    monkeypatch.setattr(hugepages, "_glibc_has_tunable", lambda: True)
    monkeypatch.setattr(hugepages, "_thp_available", lambda: True)
    assert hugepages.hugepage_env(environ) is None


def test_no_restart_without_transparent_huge_pages(monkeypatch):
    monkeypatch.setattr(hugepages, "_thp_available", lambda: False)
    assert hugepages.hugepage_env({}) is None


def test_the_command_restarts_itself_once_with_the_tunable():
    """``python -m allam_jax`` re-executes with the same arguments; the child sees the tunable (or, where this
    machine cannot use it, nothing changes)."""
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "ALLAM_HUGEPAGES")}
    code = ("import os, sys; sys.argv = ['allam', '--help']; from allam_jax.core.hugepages import reexec_with_hugepages; "
            "print('start', os.environ.get('GLIBC_TUNABLES'), sys.orig_argv[-1] == 'marker', flush=True); "
            "reexec_with_hugepages()")
    out = subprocess.run([sys.executable, "-c", code, "marker"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    if hugepages.hugepage_env(env) is None:
        assert lines == ["start None True"]
    else:
        assert lines == ["start None True", "start glibc.malloc.hugetlb=1 True"]
