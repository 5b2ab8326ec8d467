"""The searchable texts (message/textextract.py) and the full-text index (store/fts.py).

- extraction: base64, quoted-printable, charsets, HTML kept as the scan matches it, attachments'
  names (in TEXT, through the parts' header blocks), malformed MIME, the size limit;
- the index: what it stores, removal, a damaged or deleted file made again;
- property (hypothesis): for random bodies in random encodings and random search strings, the
  index's candidates hold every message the scan (imap/search.py) matches, so candidates checked
  by the scan are exactly the scan's result.
"""

from __future__ import annotations

import base64
import quopri
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailhaven.imap import commands as C
from mailhaven.imap import search
from mailhaven.message import textextract
from mailhaven.store import fts


def _msg(body: bytes, ctype: str = "text/plain; charset=utf-8", cte: str = "8bit", subject: str = "s") -> bytes:
    return (f"From: a@example.org\r\nSubject: {subject}\r\nContent-Type: {ctype}\r\n"
            f"Content-Transfer-Encoding: {cte}\r\n\r\n").encode() + body


def _scan(data: bytes, value: str, headers: bool) -> bool:
    m = search.Message(1, 1, (), 0.0, len(data), load=lambda: data)
    return bool(search.evaluate(C.SearchText(value, headers), m, search.SearchContext(1, 1)))


def test_base64_qp_and_charsets_are_decoded_and_folded() -> None:
    b64 = _msg(base64.b64encode("Grüße aus Köln".encode()), cte="base64")
    assert "GRÜSSE" not in textextract.extract(b64).body  # ß has no simple titlecase (as Dovecot)
    assert search.fold("grüße aus köln") in textextract.extract(b64).body
    qp = _msg(quopri.encodestring("caf\u00e9 cr\u00e8me".encode("latin-1")), "text/plain; charset=iso-8859-1",
              "quoted-printable")
    assert search.fold("café crème") in textextract.extract(qp).body
    koi = _msg("привет мир".encode("koi8-r"), "text/plain; charset=koi8-r")
    assert search.fold("Привет") in textextract.extract(koi).body


def test_html_is_kept_as_the_scan_sees_it_and_attachment_names_are_in_the_header_text() -> None:
    data = (b"From: a@example.org\r\nSubject: Report\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
            b"--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Octopus <b>garden</b></p>\r\n"
            b"--b\r\nContent-Type: application/pdf; name=\"q3-report.pdf\"\r\n"
            b"Content-Disposition: attachment; filename=\"q3-report.pdf\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n")
    text = textextract.extract(data)
    assert "OCTOPUS <B>GARDEN</B>" in text.body
    assert "%PDF" not in text.body  # attachments' contents are not text
    assert "Q3-REPORT.PDF" in text.headers and "Q3-REPORT.PDF" not in text.body
    assert _scan(data, "q3-report", True) and not _scan(data, "q3-report", False)


@pytest.mark.parametrize("data", [
    b"", b"\r\n\r\n", b"no header at all", b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n--",
    b"Content-Type: text/plain; charset=base64\r\n\r\nabc", b"Content-Transfer-Encoding: base64\r\n\r\n!!!",
    b"Content-Type: text/plain; charset=\"\xff\xfe\"\r\n\r\n\xff\x00\xfe",
    b"Content-Type: multipart/mixed; boundary=x\r\n\r\n" + b"--x\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n" * 300,
])
def test_malformed_mime_never_raises(data: bytes) -> None:
    assert fts.extract(data) is not None


def test_texts_beyond_the_limit_are_cut_and_marked(tmp_path: Path) -> None:
    data = _msg(b"a" * 50 + b" needle")
    cut = textextract.extract(data, 20)
    assert cut.truncated and len(cut.body) == 20
    idx = fts.FtsIndex(tmp_path)
    idx.add([("k1", cut), ("k2", textextract.extract(_msg(b"other")))])
    assert idx.matching([("NEEDLE", False)]) == {"k1"}  # not found in the index: still a candidate
    idx.close()


def test_the_index_finds_substrings_forgets_keys_and_survives_deletion_and_damage(tmp_path: Path) -> None:
    idx = fts.FtsIndex(tmp_path)
    idx.add([("k1", textextract.extract(_msg(b"part one\x00zebrafish", subject="Hello"))),
             ("k2", textextract.extract(_msg(b"Zebra", subject="fish")))])
    assert idx.matching([("ZEBRAFISH", False)]) == {"k1"}
    assert idx.matching([("EBR", False)]) == {"k1", "k2"}
    assert idx.matching([("HELLO", False)]) == set() and idx.matching([("HELLO", True)]) == {"k1"}
    assert idx.matching([("ZEBRA", False), ("FISH", True)]) == {"k1", "k2"}
    assert idx.matching([('"QUOTED" \'X', True)]) == set()  # FTS5 query syntax is escaped
    assert idx.known(["k1", "k2", "k3"]) == {"k1", "k2"}
    idx.remove(["k1"])
    assert idx.known(["k1", "k2"]) == {"k2"}
    (tmp_path / fts.FILENAME).unlink()  # deleted while open: a new, empty file
    assert idx.known(["k2"]) == set()
    idx.close()
    (tmp_path / fts.FILENAME).write_bytes(b"not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (tmp_path / (fts.FILENAME + suffix)).unlink(missing_ok=True)
    idx = fts.FtsIndex(tmp_path)
    assert idx.known(["k2"]) == set()  # damaged: made again
    idx.close()


def test_candidates_index_what_is_missing_and_keep_unreadable_messages(tmp_path: Path) -> None:
    box = tmp_path / "cur"
    box.mkdir()
    (box / "a").write_bytes(_msg(b"the walrus"))
    (box / "b").write_bytes(_msg(b"the carpenter"))
    f = fts.Fts()
    paths = {1: str(box / "a"), 2: str(box / "b"), 3: str(box / "gone"), 4: None}
    uids = {"a": 1, "b": 2, "c": 3, "d": 4}
    assert f.candidates(tmp_path, uids, paths.get, [("WALRUS", False)]) == {"a", "c", "d"}
    assert f.index(tmp_path).known(list(uids)) == {"a", "b"}
    f.close()


def test_background_indexing_and_forgetting(tmp_path: Path) -> None:
    f = fts.Fts()
    f.later(tmp_path, "k", _msg(b"background"))
    assert f.wait_idle(10)
    assert f.index(tmp_path).matching([("BACKGROUND", False)]) == {"k"}
    f.forget_later(tmp_path, ["k"])
    assert f.wait_idle(10)
    assert f.index(tmp_path).known(["k"]) == set()
    f.close()


_ALPHABET = st.sampled_from(list("abcXYZ éÉßŞıİǅǆ\u0301Å'\"*-:()\r\n\tΣσς\x00") + ["Ǻ", "ﬁ", "½"])
_TEXT = st.text(_ALPHABET, max_size=40)


def _encode(text: str, charset: str, cte: str) -> bytes | None:
    try:
        raw = text.replace("\r\n", "\n").replace("\n", "\r\n").encode(charset)
    except UnicodeEncodeError:
        return None
    if cte == "base64":
        return base64.encodebytes(raw).replace(b"\n", b"\r\n")
    if cte == "quoted-printable":
        return quopri.encodestring(raw).replace(b"\n", b"\r\n")
    return raw


@st.composite
def _corpus(draw: st.DrawFn) -> tuple[list[bytes], str, bool]:
    msgs = []
    texts = []
    for i in range(draw(st.integers(1, 5))):
        parts = draw(st.lists(_TEXT, min_size=1, max_size=3))
        texts.extend(parts)
        body = bytearray(b"--sep\r\n")
        for text in parts:
            charset = draw(st.sampled_from(["utf-8", "iso-8859-1", "us-ascii"]))
            cte = draw(st.sampled_from(["8bit", "base64", "quoted-printable"]))
            enc = _encode(text, charset, cte)
            if enc is None:
                enc, charset = _encode(text, "utf-8", cte) or b"", "utf-8"
            body += (f"Content-Type: text/plain; charset={charset}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
                     ).encode() + enc + b"\r\n--sep\r\n"
        subject = draw(_TEXT).replace("\r", " ").replace("\n", " ")
        msgs.append((f"From: a{i}@example.org\r\nSubject: =?utf-8?b?"
                     f"{base64.b64encode(subject.encode()).decode()}?=\r\n"
                     "Content-Type: multipart/mixed; boundary=sep\r\n\r\n").encode() + bytes(body) + b"--sep--\r\n")
    source = draw(st.sampled_from(texts))
    start = draw(st.integers(0, len(source)))
    needle = source[start:start + draw(st.integers(0, 8))]
    if draw(st.booleans()):
        needle = needle.swapcase()
    if draw(st.booleans()):
        needle = draw(_TEXT)
    return msgs, needle, draw(st.booleans())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_corpus())
def test_index_candidates_hold_every_scan_match(tmp_path: Path, case: tuple[list[bytes], str, bool]) -> None:
    msgs, needle, headers = case
    folded = search.fold(needle)
    scan = {f"k{i}" for i, m in enumerate(msgs) if _scan(m, needle, headers)}
    if not fts.usable(folded):
        return  # the session scans everything for these
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    idx = fts.FtsIndex(root)
    try:
        idx.add([(f"k{i}", fts.extract(m)) for i, m in enumerate(msgs)])
        cands = idx.matching([(folded, headers)])
    finally:
        idx.close()
    assert scan <= cands
    assert {k for k in cands if _scan(msgs[int(k[1:])], needle, headers)} == scan


def test_long_strings_are_looked_up_by_a_sample_of_their_trigrams(tmp_path: Path) -> None:
    text = "".join(f"w{i:03d} " for i in range(200))
    idx = fts.FtsIndex(tmp_path)
    idx.add([("k", textextract.extract(_msg(text.encode()))), ("o", textextract.extract(_msg(b"w001 w002")))])
    assert idx.matching([(search.fold(text[13:400]), False)]) == {"k"}
    assert idx.matching([(search.fold(text[13:400]) + "!", False)]) <= {"k"}
    idx.close()


def test_removed_rows_leave_trigrams_behind_until_they_outnumber_the_live_rows(tmp_path: Path) -> None:
    idx = fts.FtsIndex(tmp_path)
    docs = [(f"k{i}", textextract.extract(_msg(b"common words %d" % i))) for i in range(1200)]
    idx.add(docs)
    idx.remove([f"k{i}" for i in range(600)])
    assert idx.matching([("COMMON", False)]) == {f"k{i}" for i in range(600, 1200)}
    idx.remove([f"k{i}" for i in range(600, 1100)])  # 1,100 leftovers, 100 live: emptied
    assert idx.known([f"k{i}" for i in range(1200)]) == set()
    idx.add(docs[:1])
    assert idx.matching([("COMMON", False)]) == {"k0"}  # filled again
    idx.close()


def test_a_large_backlog_is_filled_in_the_background_and_scanned_meanwhile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fts, "SYNC_INDEX", 2)
    box = tmp_path / "cur"
    box.mkdir()
    for name, body in (("a", b"the walrus"), ("b", b"the carpenter"), ("c", b"oysters")):
        (box / name).write_bytes(_msg(body))
    f = fts.Fts()
    uids = {"a": 1, "b": 2, "c": 3}
    paths = {1: str(box / "a"), 2: str(box / "b"), 3: str(box / "c")}
    assert f.candidates(tmp_path, uids, paths.get, [("WALRUS", False)]) == {"a", "b", "c"}  # all scanned
    assert f.wait_idle(10)
    assert f.index(tmp_path).known(list(uids)) == {"a", "b", "c"}
    assert f.candidates(tmp_path, uids, paths.get, [("WALRUS", False)]) == {"a"}
    f.close()


def test_only_the_most_recently_used_files_stay_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fts, "MAX_OPEN", 1)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    f = fts.Fts()
    first = f.index(tmp_path / "a")
    first.add([("k", textextract.extract(_msg(b"alpha")))])
    f.index(tmp_path / "b").add([("k", textextract.extract(_msg(b"beta")))])
    assert first._db is None  # closed
    assert f.index(tmp_path / "a").matching([("ALPHA", False)]) == {"k"}
    f.close()


def test_the_kept_keys_follow_other_connections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fts, "KEEP_KEYS", 1)
    mine, other = fts.FtsIndex(tmp_path), fts.FtsIndex(tmp_path)  # as two processes
    text = textextract.extract(_msg(b"x"))
    mine.add([("a", text)])
    asked = ["a", "b", "c"]
    assert mine.known(asked) >= {"a"} and "b" not in mine.known(asked)
    other.add([("b", text)])
    assert {"a", "b"} <= mine.known(asked)
    mine.add([("c", text)])
    other.remove(["a"])
    assert "a" not in mine.known(asked) and {"b", "c"} <= mine.known(asked)
    mine.close()
    other.close()


def test_close_drops_the_queued_work(tmp_path: Path) -> None:
    f = fts.Fts()
    for i in range(2000):
        f.later(tmp_path, f"k{i}", _msg(b"queued %d" % i))
    f.close()  # does not index 2,000 messages first
    assert f.wait_idle(0)
    assert len(f.index(tmp_path).known([f"k{i}" for i in range(2000)])) < 2000
    f.close()
