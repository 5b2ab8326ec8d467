"""metrics.merge: the supervising parent's /metrics is the sum of its workers' expositions."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from mailhaven.metrics import Metrics, merge


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text.decode()) for s in fam.samples}


def test_counters_gauges_and_histograms_are_summed_per_label_set() -> None:
    a, b = Metrics(process=False), Metrics(process=False)
    for _ in range(3):
        a.connection_opened("imap")
    b.connection_opened("imap")
    b.connection_opened("pop3")
    b.connection_closed("pop3")
    a.command_latency("imap", "FETCH", 0.002)
    b.command_latency("imap", "FETCH", 0.2)
    a.set_queue_probe(lambda: (4, 30.0))
    got = samples(merge([a.render().decode(), b.render().decode()], workers=2))
    assert got[("mailhaven_connections_total", (("listener", "imap"),))] == 4
    assert got[("mailhaven_connections_total", (("listener", "pop3"),))] == 1
    assert got[("mailhaven_connections_active", (("listener", "imap"),))] == 4
    assert got[("mailhaven_connections_active", (("listener", "pop3"),))] == 0
    fetch = (("proto", "imap"), ("verb", "FETCH"))
    assert got[("mailhaven_command_duration_seconds_count", fetch)] == 2
    assert abs(got[("mailhaven_command_duration_seconds_sum", fetch)] - 0.202) < 1e-9
    assert got[("mailhaven_command_duration_seconds_bucket", (("le", "0.0025"), *fetch))] == 1
    assert got[("mailhaven_command_duration_seconds_bucket", (("le", "+Inf"), *fetch))] == 2
    assert got[("mailhaven_queue_messages", ())] == 4  # only worker 0 has a queue
    assert got[("mailhaven_queue_oldest_age_seconds", ())] == 30.0
    [version] = [k for k in got if k[0] == "mailhaven_build_info"]
    assert got[version] == 1  # the same in every worker: not summed
    assert got[("mailhaven_workers", ())] == 2


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["mx", "imap", "pop3", "submission"]), max_size=8), min_size=1, max_size=4))
def test_merged_connection_counts_are_the_totals_of_every_worker(per_worker: list[list[str]]) -> None:
    texts = []
    for opened in per_worker:
        m = Metrics(process=False)
        for name in opened:
            m.connection_opened(name)
        texts.append(m.render().decode())
    got = samples(merge(texts, workers=len(per_worker)))
    for name in {n for opened in per_worker for n in opened}:
        assert got[("mailhaven_connections_total", (("listener", name),))] == sum(o.count(name) for o in per_worker)
