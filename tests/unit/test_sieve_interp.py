"""The Sieve evaluator (sieve/interp.py, sieve/match.py): tests, actions, implicit keep, the
extensions' semantics, limits and runtime errors, on small scripts and messages. What sieve-test can
check is in the corpus (tests/sieve/corpus); this file holds the rest: currentdate, ereject, the null
sender, duplicate tracking across runs, vacation's reasons not to answer, editheader's edited
header list, include loops at run time, and the limits."""
from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from mailhaven.sieve import (
    Context,
    DictTracker,
    Discard,
    Envelope,
    FileInto,
    Keep,
    Limits,
    Redirect,
    Reject,
    Result,
    SieveSyntaxError,
    Vacation,
    compile_script,
    evaluate,
)
from mailhaven.sieve.match import glob_match, match_one, relational

MSG = (b"Date: Mon, 07 Dec 2026 09:59:58 +0100\r\nFrom: Bob <bob@example.org>\r\n"
       b"To: Alice <alice+work@example.com>\r\nSubject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= and more\r\n"
       b"Message-ID: <m1@example.org>\r\nX-Score: 12\r\n\r\nHello body text\r\n")
ENV = Envelope("bob@example.org", "alice@example.com")


def run(script: str, msg: bytes = MSG, env: Envelope = ENV, **ctx: object) -> Result:
    return evaluate(script, msg, env, Context(**ctx))  # type: ignore[arg-type]


def boxes(res: Result) -> list[str]:
    return [a.mailbox if isinstance(a, FileInto) else "INBOX" for a in res.actions
            if isinstance(a, FileInto | Keep)]


# --------------------------------------------------------------------------- match types, comparators

def test_match_types_and_comparators() -> None:
    assert match_one("Hello", "hello", "is", "i;ascii-casemap") == ["Hello"]
    assert match_one("Hello", "hello", "is", "i;octet") is None
    assert match_one("Hello World", "O W", "contains", "i;ascii-casemap") is not None
    assert match_one("ÄB", "äb", "is", "i;ascii-casemap") is None  # casemap folds ASCII only
    assert match_one("list-foo@x", "LIST-*@?", "matches", "i;ascii-casemap") == ["list-foo@x", "foo", "x"]
    assert match_one("a*b", "a\\*b", "matches", "i;octet") == ["a*b"]
    assert match_one("axb", "a\\*b", "matches", "i;octet") is None
    assert relational("lt", "9", "10", "i;ascii-numeric")
    assert relational("gt", "abc", "999999", "i;ascii-numeric")  # no digits: positive infinity (RFC 4790 §9.1)
    assert relational("eq", "007", "7", "i;ascii-numeric")
    assert relational("lt", "B", "a", "i;octet") and not relational("lt", "B", "a", "i;ascii-casemap")


def test_glob_is_linear_on_hostile_patterns() -> None:
    start = time.monotonic()
    assert glob_match("a" * 20000, "*a" * 200 + "*b") is None
    assert glob_match("a" * 20000 + "b", "*a" * 200 + "*b") is not None
    assert time.monotonic() - start < 2


def test_numeric_comparator_refuses_substring_at_run_time() -> None:
    res = run('require ["comparator-i;ascii-numeric", "fileinto"];\n'
              'if header :contains :comparator "i;ascii-numeric" "x-score" "1" { fileinto "x"; }')
    assert res.error and res.actions == [Keep(implicit=True)]


# --------------------------------------------------------------------------- headers, addresses, body

def test_header_decoding_and_address_parts() -> None:
    res = run('require ["fileinto", "subaddress"];\n'
              'if header :contains "subject" "Grüße and" { fileinto "decoded"; }\n'
              'if address :user "to" "alice" { fileinto "user"; }\n'
              'if address :detail "to" "work" { fileinto "detail"; }\n'
              'if address :detail :matches "from" "*" { fileinto "never"; }\n'
              'if address :domain :is "from" "EXAMPLE.org" { fileinto "domain"; }')
    assert boxes(res) == ["decoded", "user", "detail", "domain"]


def test_body_transforms_decode_parts() -> None:
    msg = (b"From: a@b\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n"
           b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
           b"caf=E9 ok\r\n--x\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           b"c2VjcmV0\r\n--x--\r\n")
    res = run('require ["body", "fileinto"];\n'
              'if body :contains "café" { fileinto "text"; }\n'
              'if body :contains "secret" { fileinto "never"; }\n'
              'if body :content "application" :contains "secret" { fileinto "content"; }\n'
              'if body :raw :contains "caf=E9" { fileinto "raw"; }', msg)
    assert boxes(res) == ["text", "content", "raw"]


# --------------------------------------------------------------------------- variables, relational

def test_variables_match_groups_and_modifiers() -> None:
    res = run('require ["variables", "fileinto"];\n'
              'if header :matches "from" "* <*@*>" { set "who" "${2}"; set "all" "${0}"; }\n'
              'set :upper :lowerfirst "m" "abc";\n'  # upper (40) first, then lowerfirst (30): aBC
              'set :length "n" "${who}";\n'
              'fileinto "${who}.${m}.${n}.${undefined}.${9}";')
    assert boxes(res) == ["bob.aBC.3..", ]


def test_relational_count_and_value() -> None:
    res = run('require ["relational", "comparator-i;ascii-numeric", "fileinto"];\n'
              'if header :value "ge" :comparator "i;ascii-numeric" "x-score" "10" { fileinto "ge10"; }\n'
              'if address :count "eq" :comparator "i;ascii-numeric" ["to", "from"] "2" { fileinto "two"; }\n'
              'if header :count "eq" :comparator "i;ascii-numeric" "x-none" "0" { fileinto "zero"; }')
    assert boxes(res) == ["ge10", "two", "zero"]


# --------------------------------------------------------------------------- date, index

def test_date_zones_and_currentdate() -> None:
    now = datetime(2026, 12, 31, 23, 30, tzinfo=UTC)
    res = run('require ["date", "fileinto", "variables"];\n'
              'if date :zone "+0000" "date" "time" "08:59:58" { fileinto "utc"; }\n'
              'if date :originalzone "date" "zone" "+0100" { fileinto "orig"; }\n'
              'if date "date" "hour" "17" { fileinto "local"; }\n'  # context zone +0900
              'if currentdate :zone "+0100" "year" "2027" { fileinto "newyear"; }\n'
              'if currentdate :matches "weekday" "*" { fileinto "wd${1}"; }\n'
              'if currentdate :matches "julian" "*" { fileinto "mjd${1}"; }\n'
              'if currentdate :zone "bogus" "year" "2027" { fileinto "bogus-is-local"; }\n'  # as Pigeonhole
              'if currentdate :zone "+0000" "year" "2027" { fileinto "never"; }',
              now=now, zone=timezone(timedelta(hours=9)))
    assert boxes(res) == ["utc", "orig", "local", "newyear", "wd5", "mjd61406", "bogus-is-local"]  # 2027-01-01 in +0900: MJD 61406


def test_index_and_last() -> None:
    msg = b"X-A: one\r\nX-A: two\r\nX-A: three\r\n\r\nx\r\n"
    res = run('require ["index", "fileinto", "date"];\n'
              'if header :index 2 "x-a" "two" { fileinto "second"; }\n'
              'if header :index 1 :last "x-a" "three" { fileinto "last"; }\n'
              'if header :index 4 :matches "x-a" "*" { fileinto "never"; }', msg)
    assert boxes(res) == ["second", "last"]


# --------------------------------------------------------------------------- actions and implicit keep

def test_implicit_keep_rules_and_flags() -> None:
    assert run("").actions == [Keep(implicit=True)]
    assert run("discard;").actions == [Discard()]
    assert run('require "copy"; redirect :copy "x@y.example";').actions == \
        [Redirect("x@y.example", copy=True), Keep(implicit=True)]
    res = run('require ["imap4flags", "fileinto"]; addflag ["\\\\Seen", "a"]; removeflag "\\\\seen";'
              'fileinto :flags "b c b" "box";')
    assert res.actions == [FileInto("box", ("b", "c"))]
    res = run('require "imap4flags"; setflag "x"; addflag "y";')
    assert res.actions == [Keep(("x", "y"), implicit=True)]


def test_reject_ereject_and_conflicts() -> None:
    assert run('require "ereject"; ereject "no thanks";').actions == [Reject("no thanks", extended=True)]
    res = run('require ["reject", "fileinto"]; reject "no"; fileinto "x";')
    assert res.error and "conflicts" in res.error and res.actions == [Keep(implicit=True)]


def test_null_sender_envelope() -> None:
    res = run('require ["envelope", "fileinto"]; if envelope :is "from" "" { fileinto "bounce"; }',
              env=Envelope("", "alice@example.com"))
    assert boxes(res) == ["bounce"]


# --------------------------------------------------------------------------- vacation

def test_vacation_reply_data_and_reasons_not_to_answer() -> None:
    res = run('require "vacation"; vacation :days 2 "Away";', env=Envelope("bob@example.org", "alice+work@example.com"))
    vac = next(a for a in res.actions if isinstance(a, Vacation))
    assert (vac.recipient, vac.seconds, vac.skip) == ("bob@example.org", 2 * 86400, None)
    assert vac.reply_subject == "Auto: Grüße and more" and vac.in_reply_to == "<m1@example.org>"
    assert res.actions[-1] == Keep(implicit=True)  # vacation keeps the implicit keep (RFC 5230 §4.7)

    def skip(msg: bytes, env: Envelope, script: str = 'require "vacation"; vacation "x";') -> str | None:
        return next(a for a in run(script, msg, env).actions if isinstance(a, Vacation)).skip

    me = Envelope("bob@example.org", "alice+work@example.com")
    assert skip(MSG, Envelope("", "alice+work@example.com")) == "null envelope sender"
    assert skip(MSG, Envelope("MAILER-DAEMON@example.org", "alice+work@example.com")) is not None
    assert skip(b"Auto-Submitted: auto-replied\r\n" + MSG, me) == "message is auto-submitted"
    assert skip(b"List-Id: <l.example>\r\n" + MSG, me) == "message is from a mailing list"
    assert skip(MSG, Envelope("bob@example.org", "carl@example.com")) == "user not explicitly addressed"
    assert skip(MSG, Envelope("bob@example.org", "carl@example.com"),
                'require "vacation"; vacation :addresses "alice+work@example.com" "x";') is None


# --------------------------------------------------------------------------- duplicate

def test_duplicate_tracker_across_runs() -> None:
    tracker = DictTracker()
    script = 'require ["duplicate", "fileinto"]; if duplicate { fileinto "dup"; }'
    first = run(script, duplicates=tracker)
    assert boxes(first) == ["INBOX"] and first.duplicates
    for key, seconds, last in first.duplicates:  # the caller marks after delivery
        tracker.mark(key, seconds, last)
    assert boxes(run(script, duplicates=tracker)) == ["dup"]
    # a second test of one id in a run gets the same answer and is recorded once
    twice = run('require ["duplicate", "fileinto"]; if duplicate { fileinto "a"; } if duplicate { fileinto "b"; }',
                duplicates=DictTracker())
    assert boxes(twice) == ["INBOX"] and len(twice.duplicates) == 1
    # another handle is another list; no Message-ID is never a duplicate (RFC 7352 §3.1)
    assert boxes(run('require ["duplicate", "fileinto"]; if duplicate :handle "h" { fileinto "dup"; }',
                     duplicates=tracker)) == ["INBOX"]
    assert boxes(run(script, b"Subject: x\r\n\r\nx\r\n", duplicates=tracker)) == ["INBOX"]
    uid = 'require ["duplicate", "fileinto"]; if duplicate :uniqueid "k" { fileinto "dup"; }'
    tracker.mark(run(uid).duplicates[0][0], 60, False)
    assert boxes(run(uid, duplicates=tracker)) == ["dup"]


# --------------------------------------------------------------------------- include

class Loader:
    def __init__(self, scripts: dict[tuple[str, str], str]) -> None:
        self.scripts = scripts

    def load(self, name: str, location: str) -> str | None:
        return self.scripts.get((location, name))


def test_include_locations_return_and_globals() -> None:
    loader = Loader({("personal", "p"): 'require ["include", "variables", "fileinto"]; global "g";'
                                         'fileinto "p-${g}"; return; fileinto "never";',
                     ("global", "p"): 'require "fileinto"; fileinto "global-p";'})
    res = run('require ["include", "variables"]; global "g"; set "g" "v"; set "local" "l";'
              'include "p"; include :global "p"; include :once "p"; include :once "p";', loader=loader)
    assert boxes(res) == ["p-v", "global-p"]


def test_include_loops_and_missing_scripts_are_refused() -> None:
    loader = Loader({("personal", "a"): 'require "include";\ninclude "b";',
                     ("personal", "b"): 'require "include";\n\n  include "a";',
                     ("personal", "bad"): 'require "fileinto";\nfileinto "x"'})
    with pytest.raises(SieveSyntaxError) as e:
        compile_script('require "include";\nkeep;\n include "a";', loader=loader)
    assert (e.value.line, e.value.column) == (3, 2) and "loop" in e.value.message
    with pytest.raises(SieveSyntaxError) as e:
        compile_script('require "include"; include "nowhere";', loader=loader)
    assert "does not exist" in e.value.message
    with pytest.raises(SieveSyntaxError) as e:
        compile_script('require "include"; include "bad";', loader=loader)
    assert "line 2" in e.value.message
    compile_script('require "include"; include :optional "nowhere";', loader=loader)
    # compiled without the loader, the loop is a runtime error: implicit keep and the error
    res = run('require "include"; include "a";', loader=loader)
    assert res.error and "loop" in res.error and res.actions == [Keep(implicit=True)]


# --------------------------------------------------------------------------- editheader

def test_editheader_produces_the_edited_header_list() -> None:
    res = run('require ["editheader", "fileinto"];\n'
              'addheader "X-New" "Grüße";\naddheader :last "X-End" "e";\n'
              'deleteheader :matches "subject" "*more";\ndeleteheader "received";\n'
              'if not exists "subject" { fileinto "gone"; }', b"Received: r\r\n" + MSG)
    assert boxes(res) == ["gone"]
    assert res.headers is not None
    names = [n for n, _ in res.headers]
    assert names[0] == "X-New" and names[-1] == "X-End" and "Subject" not in names and "Received" in names
    assert res.headers[0][1] == "=?utf-8?b?R3LDvMOfZQ==?="
    assert run("keep;").headers is None
    injected = run('require ["editheader", "encoded-character"];'
                   'addheader "X-A" "a${hex:0d}Bcc: x@evil${hex:0a}To: y@evil${hex:0d 0a}Z: z";').headers
    assert injected is not None and [n for n, _ in injected][:2] == ["X-A", "Date"]
    assert injected[0][1] == "a\r\n Bcc: x@evil\r\n To: y@evil\r\n Z: z"
    long = run('require "editheader"; addheader "X-Long" "' + "Grüße " * 30 + '";').headers
    assert long is not None and "\r\n " in long[0][1]  # folded with CRLF (RFC 5322 §2.2.3) ...
    assert "\n" not in long[0][1].replace("\r\n", "")  # ... never a bare LF
    with pytest.raises(SieveSyntaxError):  # a constant bad name is refused at upload (as Pigeonhole)
        compile_script('require "editheader"; addheader "Bad Name" "x";')
    bad = run('require ["editheader", "variables"]; set "n" "Bad Name"; addheader "${n}" "x";')
    assert bad.error and bad.actions == [Keep(implicit=True)]


def test_addresses_are_checked_at_upload_and_at_run_time() -> None:
    for script in ('redirect "no address";', 'require "vacation"; vacation :from "a b" "x";'):
        with pytest.raises(SieveSyntaxError):
            compile_script(script)
    assert run('redirect "Boss <boss@example.com>";').actions == [Redirect("boss@example.com")]
    res = run('require "variables"; set "a" "x y"; redirect "${a}";')
    assert res.error and "invalid address" in res.error and res.actions == [Keep(implicit=True)]


# --------------------------------------------------------------------------- limits

def test_limits() -> None:
    five = "".join(f'redirect "u{i}@example.net";' for i in range(5))
    res = run(five)
    assert res.error and "redirects" in res.error and res.actions == [Keep(implicit=True)]
    assert not run(five, limits=Limits(max_redirects=5)).error
    res = run('require "fileinto";' + "".join(f'fileinto "b{i}";' for i in range(4)), limits=Limits(max_actions=3))
    assert res.error and "actions" in res.error
    loop = 'require "fileinto";' + 'if true { keep; } ' * 50
    assert "steps" in (run(loop, limits=Limits(max_steps=20)).error or "")
    ticks = iter(range(0, 10**6, 10))
    assert "longer" in (run(loop + loop[19:] * 2, clock=lambda: float(next(ticks)), limits=Limits(max_seconds=5)).error or "")
    with pytest.raises(SieveSyntaxError):
        compile_script("keep;" * 1000, max_size=1000)
