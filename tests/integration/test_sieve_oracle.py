"""Differential test of the Sieve engine against Dovecot Pigeonhole's `sieve-test` (issue 13 item 4):
every corpus pair runs through both, and the normalised actions must be equal.

`sieve-test` comes from Debian's dovecot-sieve. Without it the test is skipped, unless
MAILHAVEN_SIEVE_TEST is set (CI exports it), which makes a missing binary a failure.
The live oracle output is also checked against the recorded tests/sieve/corpus/expected.json, which
tests/unit/test_sieve_corpus.py uses where sieve-test is absent.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.sieve.oracle import EXPECTED, KNOWN_DIFFERENCES, SieveTest, load_pairs, normalise_ours


def _binary() -> str:
    wanted = os.environ.get("MAILHAVEN_SIEVE_TEST")
    found = wanted or shutil.which("sieve-test")
    if found and os.access(found, os.X_OK):
        return found
    if wanted is not None:
        pytest.fail(f"MAILHAVEN_SIEVE_TEST={wanted!r} is set but sieve-test is not there")
    pytest.skip("sieve-test (Debian dovecot-sieve) is not installed")


def test_engine_matches_sieve_test() -> None:
    # not tmp_path: pytest's base directory is 0700, and sieve-test reads the scripts as nobody under root
    with tempfile.TemporaryDirectory(prefix="mailhaven-sieve-") as d:
        _compare(SieveTest(_binary(), Path(d)))


def _compare(oracle: SieveTest) -> None:
    pairs = load_pairs()
    assert len(pairs) >= 60
    recorded = json.loads(EXPECTED.read_text())
    equal, mismatches, stale = 0, [], []
    for pair in pairs:
        theirs, ours = oracle.run(pair), normalise_ours(pair)
        if recorded.get(pair.name) != theirs:
            stale.append(pair.name)
        if theirs == ours:
            equal += 1
            assert pair.name not in KNOWN_DIFFERENCES, f"{pair.name} now agrees: drop it from KNOWN_DIFFERENCES"
        elif pair.name not in KNOWN_DIFFERENCES:
            mismatches.append(f"{pair.name}:\n  ours:       {ours}\n  sieve-test: {theirs}")
    print(f"\nsieve differential score: {equal}/{len(pairs)} equal "
          f"({len(KNOWN_DIFFERENCES)} known differences: {', '.join(sorted(KNOWN_DIFFERENCES))})")
    assert not mismatches, "\n".join(mismatches)
    assert not stale, f"expected.json is out of date for {stale}: regenerate with python -m tests.sieve.record"
