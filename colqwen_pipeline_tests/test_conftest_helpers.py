"""The shared test helpers fail when what they watch goes wrong (a helper that cannot fail hides bugs)."""

from __future__ import annotations

import itertools
import os
import threading

import pytest

from colqwen_pipeline_tests.conftest import run_in_threads


def test_run_in_threads_reports_errors_and_threads_that_outlive_the_timeout():
    release = threading.Event()
    calls = itertools.count()  # next() on it is atomic: exactly one thread sees 0

    def work() -> None:
        if next(calls) == 0:
            raise ValueError("boom")
        release.wait(30)  # the others hang until released

    try:
        errors = run_in_threads(work, count=3, timeout_s=0.5)
    finally:
        release.set()

    assert errors == ["ValueError('boom')", "2 of 3 thread(s) still running after 0.5 s"]
    assert run_in_threads(lambda: None, count=3, timeout_s=5) == []


def test_under_xdist_a_module_runs_as_one_group(request: pytest.FixtureRequest):
    """``make test`` splits the suite by module (and the Milvus server's modules as one group), so a
    module's servers start once. xdist names the group in the node id; without it every test was
    scheduled alone and both workers started every module's fixtures."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("runs under xdist only (make test)")
    assert request.node.nodeid.endswith("@test_conftest_helpers"), request.node.nodeid
