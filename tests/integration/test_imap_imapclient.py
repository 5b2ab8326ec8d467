"""Every command through imapclient (a second, independent client library): it parses our responses
with its own lexer, so malformed FETCH data, literals or response codes fail here."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from tests.fixtures_base import PASSWORD
from tests.integration.test_imap_server import ALICE, ImapHarness, make_message


@pytest.fixture
def imap(make_config: Callable[..., Any]) -> Iterator[ImapHarness]:
    h = ImapHarness(make_config("imap", {"imaps": {"tls": "implicit"}})).start()
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture
def client(imap: ImapHarness, client_ssl_context: ssl.SSLContext) -> Iterator[IMAPClient]:
    c = IMAPClient("127.0.0.1", port=imap.ports["imap"], ssl=False, timeout=30)
    c.starttls(client_ssl_context)
    c.login(ALICE, PASSWORD)
    yield c
    try:
        c.logout()
    except (IMAPClientError, OSError):
        pass


def test_implicit_tls_login_capabilities_namespace_id(imap: ImapHarness, client_ssl_context: ssl.SSLContext
                                                       ) -> None:
    c = IMAPClient("127.0.0.1", port=imap.ports["imaps"], ssl=True, ssl_context=client_ssl_context, timeout=30)
    c.login(ALICE, PASSWORD)
    caps = c.capabilities()
    for cap in (b"IMAP4REV1", b"IDLE", b"UIDPLUS", b"MOVE", b"SPECIAL-USE", b"NAMESPACE", b"ID", b"ENABLE",
                b"UNSELECT", b"CHILDREN", b"LITERAL+"):
        assert cap in caps
    ns = c.namespace()
    assert ns.personal == (("", "."),) and ns.other is None and ns.shared is None
    server_id = c.id_({"name": "test"})
    assert server_id == ((b"name", b"Mailhaven"),)
    assert c.noop()[0].startswith(b"NOOP")
    c.logout()


def test_plain_sasl_login(imap: ImapHarness) -> None:
    c = IMAPClient("127.0.0.1", port=imap.ports["imap"], ssl=False)
    c.plain_login(ALICE, PASSWORD)
    assert c.list_folders()
    c.logout()


def test_folders_create_rename_delete_subscribe_status_special_use(client: IMAPClient) -> None:
    client.create_folder("Reports")
    client.create_folder("Reports.2024")
    assert client.folder_exists("Reports.2024")
    names = {f[2]: f[0] for f in client.list_folders()}
    assert b"\\HasChildren" in names["Reports"] and b"\\HasNoChildren" in names["Reports.2024"]
    assert b"\\Sent" in names["Sent"] and b"\\Trash" in names["Trash"] and b"\\Junk" in names["Junk"]
    assert client.find_special_folder(b"\\Drafts") == "Drafts"
    client.rename_folder("Reports.2024", "Reports.Old")
    client.subscribe_folder("Reports.Old")
    assert [f[2] for f in client.list_sub_folders()] == ["Reports.Old"]
    client.unsubscribe_folder("Reports.Old")
    st = client.folder_status("Reports.Old", [b"MESSAGES", b"UIDNEXT", b"UNSEEN", b"RECENT", b"UIDVALIDITY"])
    assert st[b"MESSAGES"] == 0 and st[b"UIDNEXT"] == 1
    client.delete_folder("Reports.Old")
    with pytest.raises(IMAPClientError):
        client.delete_folder("Reports.Old")
    client.create_folder("Entwürfe")  # imapclient encodes modified UTF-7
    assert "Entwürfe" in [f[2] for f in client.list_folders()]
    client.select_folder("Entwürfe")
    client.unselect_folder()


def test_select_examine_fetch_store_search(imap: ImapHarness, client: IMAPClient) -> None:
    imap.fill(4)
    info = client.select_folder("INBOX")
    assert info[b"EXISTS"] == 4 and info[b"UIDNEXT"] == 5 and info[b"READ-WRITE"]
    assert b"\\Seen" in info[b"PERMANENTFLAGS"]
    data = client.fetch([1, 2, 3, 4], ["FLAGS", "RFC822.SIZE", "INTERNALDATE", "ENVELOPE", "BODYSTRUCTURE",
                                       "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
    assert set(data) == {1, 2, 3, 4}
    env = data[2][b"ENVELOPE"]
    assert env.subject == b"message 2" and env.from_[0].mailbox == b"sender" and env.from_[0].host == b"example.org"
    assert data[1][b"BODYSTRUCTURE"][0] == b"text"
    assert data[3][b"BODY[HEADER.FIELDS (SUBJECT)]"] == b"Subject: message 3\r\n\r\n"
    assert isinstance(data[1][b"INTERNALDATE"], datetime)
    whole = client.fetch([4], ["BODY[]"])[4][b"BODY[]"]
    assert whole == make_message(4)
    assert b"\\Seen" in client.get_flags([4])[4]
    client.add_flags([1, 2], [b"\\Flagged", b"Work"])
    client.remove_flags([2], [b"Work"])
    flags = client.get_flags([1, 2])
    assert set(flags[1]) >= {b"\\Flagged", b"Work"} and b"Work" not in flags[2]
    client.set_flags([3], [b"\\Answered"])
    assert client.search(["FLAGGED"]) == [1, 2]
    assert client.search(["ANSWERED"]) == [3]
    assert client.search(["SUBJECT", "message 2"]) == [2]
    assert client.search(["SINCE", datetime(2000, 1, 1).date()]) == [1, 2, 3, 4]
    assert client.search(["KEYWORD", "Work"]) == [1]
    assert client.search("UNSEEN", charset="UTF-8") == [1, 2, 3]
    client.close_folder()
    info = client.select_folder("INBOX", readonly=True)
    assert info[b"READ-ONLY"]
    with pytest.raises(IMAPClientError):
        client.add_flags([1], [b"\\Deleted"])


def test_append_copy_move_expunge_uidplus(imap: ImapHarness, client: IMAPClient) -> None:
    when = datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC)
    resp = client.append("INBOX", make_message(1), flags=[b"\\Seen"], msg_time=when)
    assert b"[APPENDUID " in resp
    client.append("INBOX", make_message(2))
    client.append("INBOX", make_message(3))
    client.select_folder("INBOX")
    assert client.fetch([1], ["INTERNALDATE"])[1][b"INTERNALDATE"].replace(tzinfo=None) == \
        when.astimezone().replace(tzinfo=None)
    client.copy([1, 2], "Archive")
    assert len(imap.messages(folder="Archive")) == 2
    client.move([3], "Trash")
    assert [m.uid for m in imap.messages()] == [1, 2]
    client.delete_messages([1, 2])
    client.uid_expunge([2])
    assert [m.uid for m in imap.messages()] == [1]
    client.expunge()
    assert imap.messages() == []


def test_idle_check_and_done(imap: ImapHarness, client: IMAPClient) -> None:
    imap.fill(1)
    client.select_folder("INBOX")
    client.idle()
    imap.deliver(make_message(2))
    responses = client.idle_check(timeout=3)
    assert (2, b"EXISTS") in responses
    client.idle_done()
    assert client.search() == [1, 2]


def test_enable_and_unselect(client: IMAPClient) -> None:
    assert client.enable("CONDSTORE", "X-UNKNOWN") == [b"CONDSTORE"]  # RFC 5161: unknown ones ignored
    client.select_folder("INBOX")
    client.unselect_folder()
    with pytest.raises(IMAPClientError):
        client.fetch([1], ["FLAGS"])


def test_check_through_imaplib_under_imapclient(imap: ImapHarness, client: IMAPClient) -> None:
    """IMAPClient has no CHECK method: its imaplib connection sends it. RFC 3501 §6.4.1: selected
    state only, OK there (with the updates NOOP would give), BAD otherwise."""
    import imaplib

    imap.fill(1)
    client.select_folder("INBOX")
    imap.deliver(make_message(2))
    client._imap.untagged_responses.pop("EXISTS", None)
    assert client._imap.check() == ("OK", [b"Check completed."])
    assert client._imap.untagged_responses.pop("EXISTS") == [b"2"]  # CHECK reports new mail as NOOP does
    assert client.search() == [1, 2]
    client.unselect_folder()
    with pytest.raises(imaplib.IMAP4.error, match="illegal in state AUTH"):  # imaplib keeps it to itself
        client._imap.check()
    client._imap.state = "SELECTED"  # a client that lost track of its state sends it anyway
    with pytest.raises(imaplib.IMAP4.error, match=r"CHECK command error: BAD \[b'CHECK is not allowed"):
        client._imap.check()
    client._imap.state = "AUTH"
    assert client.noop()[0].startswith(b"NOOP")
