"""policy.dkim_fail in the pure decision table (policy/pipeline.py: dkim_failure, decide)."""

from __future__ import annotations

import pytest

from mailhaven.config import PolicyConfig
from mailhaven.policy import pipeline
from mailhaven.policy.dkim import DkimResult
from mailhaven.policy.dmarc import DmarcResult
from mailhaven.policy.spf import SpfResult

FROM = "sender.test"
NO_DMARC = DmarcResult("none", "none", FROM)
SPF_PASS = SpfResult("pass", "", FROM)
FAIL = DkimResult("fail", FROM, "sel", reason="body hash did not verify")
PERMERROR = DkimResult("permerror", FROM, "sel", reason="no key for signature")
TEMPERROR = DkimResult("temperror", "esp.test", "sel", reason="key lookup failed temporarily")
PASS = DkimResult("pass", "esp.test", "sel")


@pytest.mark.parametrize(("results", "expected"), [
    ([], ""),
    ([FAIL], "fail"),
    ([PERMERROR], "fail"),
    ([FAIL, PERMERROR], "fail"),
    ([FAIL, PASS], ""),  # one good signature is enough (RFC 6376 §6.1: any may be used)
    ([PASS], ""),
    ([TEMPERROR], "temperror"),
    ([FAIL, TEMPERROR], "temperror"),  # the unknown one may still pass
    ([PASS, TEMPERROR], ""),
    ([DkimResult("neutral", FROM)], ""),
    ([DkimResult("policy", FROM)], ""),
])
def test_dkim_failure_classifies_the_signatures(results: list[DkimResult], expected: str) -> None:
    assert pipeline.dkim_failure(results) == expected


def _decide(dkim_fail: str, dkim: list[DkimResult], dmarc: DmarcResult = NO_DMARC,
            spf: SpfResult | None = SPF_PASS, **policy: str) -> pipeline.Verdict:
    return pipeline.decide(PolicyConfig(dkim_fail=dkim_fail, **policy), spf, dkim, dmarc)


def test_default_is_accept() -> None:
    assert PolicyConfig().dkim_fail == "accept"
    assert pipeline.decide(PolicyConfig(), SPF_PASS, [FAIL], NO_DMARC).action == "accept"


@pytest.mark.parametrize("failed", [[FAIL], [PERMERROR], [FAIL, PERMERROR]])
def test_failed_signatures_get_the_configured_action(failed: list[DkimResult]) -> None:
    assert _decide("accept", failed).action == "accept"
    assert _decide("junk", failed) == pipeline.Verdict("junk", "DKIM check failed: no signature of this message verifies")
    v = _decide("reject", failed)
    assert (v.action, v.code, v.enhanced) == ("reject", 550, "5.7.1")
    assert v.reply == "550 5.7.1 DKIM check failed: no signature of this message verifies"


@pytest.mark.parametrize("dkim_fail", ["junk", "reject"])
def test_unsigned_or_passing_mail_is_unaffected(dkim_fail: str) -> None:
    assert _decide(dkim_fail, []) == pipeline.ACCEPT
    assert _decide(dkim_fail, [FAIL, PASS]) == pipeline.ACCEPT
    assert _decide(dkim_fail, [DkimResult("neutral", FROM)]) == pipeline.ACCEPT


def test_dmarc_reject_keeps_its_own_reason_over_a_dkim_reject() -> None:
    dmarc_fail = DmarcResult("fail", "reject", FROM, FROM, "reject")
    v = _decide("reject", [FAIL], dmarc_fail)
    assert v.reply == f"550 5.7.1 Message rejected by the DMARC policy of {FROM}"
    # ...and where the DMARC action is weaker, the DKIM one decides.
    assert _decide("reject", [FAIL], dmarc_fail, dmarc_reject="junk").reply.startswith("550 5.7.1 DKIM")
    assert _decide("junk", [FAIL], dmarc_fail, dmarc_reject="accept").action == "junk"


def test_spf_and_dkim_actions_combine_to_the_strongest() -> None:
    spf_fail = SpfResult("fail", "", "other.test")
    assert _decide("reject", [FAIL], spf=spf_fail, spf_fail="junk").reply.startswith("550 5.7.1 DKIM")
    assert _decide("junk", [FAIL], spf=spf_fail, spf_fail="reject").reply.startswith("550 5.7.1 SPF")


def test_temperror_defers_only_when_the_action_could_be_stronger() -> None:
    for dkim in ([TEMPERROR], [FAIL, TEMPERROR]):
        for action in ("junk", "reject"):
            v = _decide(action, dkim)
            assert (v.action, v.reply) == ("tempfail", "451 4.4.3 DNS error during policy check, try again later")
        assert _decide("accept", dkim) == pipeline.ACCEPT  # the default never waits on a key lookup
    quarantined = DmarcResult("fail", "quarantine", FROM, FROM, "quarantine")
    assert _decide("junk", [TEMPERROR], quarantined).action == "junk"  # junk either way
    assert _decide("reject", [TEMPERROR], quarantined).action == "tempfail"
    assert _decide("reject", [TEMPERROR], DmarcResult("fail", "reject", FROM, FROM, "reject")).action == "reject"


def test_dmarc_temperror_still_defers_whatever_dkim_fail_says() -> None:
    # An aligned key lookup that failed temporarily makes DMARC temperror: 451 as before.
    dmarc_temp = DmarcResult("temperror", "none", FROM)
    for action in ("accept", "junk", "reject"):
        assert _decide(action, [DkimResult("temperror", FROM)], dmarc_temp).reply.startswith("451 4.4.3")
