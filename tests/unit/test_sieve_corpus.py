"""The Sieve corpus against sieve-test's recorded answers (tests/sieve/corpus/expected.json), so the
differential check also runs where Dovecot's sieve-test is not installed."""
from __future__ import annotations

import json

import pytest

from tests.sieve.oracle import EXPECTED, KNOWN_DIFFERENCES, load_pairs, normalise_ours

PAIRS = load_pairs()
RECORDED = json.loads(EXPECTED.read_text())


def test_corpus_is_recorded_and_large_enough() -> None:
    assert len(PAIRS) >= 60
    assert sorted(RECORDED) == sorted(p.name for p in PAIRS)


@pytest.mark.parametrize("pair", PAIRS, ids=[p.name for p in PAIRS])
def test_pair_matches_recorded_sieve_test(pair) -> None:  # type: ignore[no-untyped-def]
    ours = normalise_ours(pair)
    if pair.name in KNOWN_DIFFERENCES:
        assert ours != RECORDED[pair.name]
    else:
        assert ours == RECORDED[pair.name]
