"""[spam] dnsbl, dnswl, dnsbl_skip and greylist*: defaults and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailhaven import config
from mailhaven.errors import ConfigError


def test_defaults_greylisting_off_no_lists_loopback_not_greylisted(tmp_path: Path) -> None:
    spam = config.from_dict({}, tmp_path).spam
    assert (spam.dnsbl, spam.dnswl, spam.dnsbl_skip, spam.greylist) == ([], [], [], False)
    assert (spam.greylist_delay, spam.greylist_expire) == (300.0, 35 * 86400.0)
    assert spam.greylist_skip == ["127.0.0.0/8", "::1/128"]


def test_durations_and_lists_load(tmp_path: Path) -> None:
    spam = config.from_dict({"spam": {"dnsbl": ["zen.spamhaus.org"], "greylist_delay": "1s",
                                      "greylist_expire": "2d", "greylist_skip": ["2001:db8::/32"]}}, tmp_path).spam
    assert spam.dnsbl == ["zen.spamhaus.org"] and spam.greylist_delay == 1.0
    assert spam.greylist_expire == 2 * 86400.0 and spam.greylist_skip == ["2001:db8::/32"]


@pytest.mark.parametrize(("spam", "message"), [
    ({"dnsbl": ["not a zone"]}, "spam.dnsbl[0]: expected a DNS list zone"),
    ({"dnswl": ["ok.test", "x"]}, "spam.dnswl[1]: expected a DNS list zone"),
    ({"dnsbl": "zen.spamhaus.org"}, "spam.dnsbl: expected an array"),
    ({"dnsbl_skip": ["192.0.2.0/33"]}, "spam.dnsbl_skip[0]: expected a network"),
    ({"greylist_skip": ["localhost"]}, "spam.greylist_skip[0]: expected a network"),
    ({"greylist": "yes"}, "spam.greylist: expected true or false"),
    ({"greylist_delay": "0s"}, "spam.greylist_delay: expected a duration"),
    ({"greylist_expire": "soon"}, "spam.greylist_expire: expected a duration"),
])
def test_bad_values_are_one_line_errors_naming_the_key(tmp_path: Path, spam: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.from_dict({"spam": spam}, tmp_path)
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)
