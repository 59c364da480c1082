"""The guard that keeps the official-compat promise honest: a fidelity test that skips fails the run."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")


def test_a_skipped_fidelity_test_fails(pytester):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini("[pytest]\nmarkers = fidelity: compares with the official code\n")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.fidelity
        def test_marked():
            pytest.skip("reference data not found")

        def test_reads_fixtures(fixture_dir):
            pass

        def test_ordinary():
            pytest.skip("an optional extra is missing")
    """)
    result = pytester.runpytest_inprocess("-p", "no:xdist", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, errors=1, skipped=1)  # missing reference data: an error, never a skip
    result.stdout.fnmatch_lines(["*fidelity test skipped, which counts as a failure*"])
