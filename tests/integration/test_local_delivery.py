"""The one local delivery agent (delivery/local.py LocalDeliveryAgent; issue 13 item 1).

Every way into a mailbox goes through it: the source has one `store.deliver` call, in the agent;
submission to local users and bounces (cleanup.py), the queue's local recipients and the MX (their
own test files: test_mx.py, test_queue_manager.py) deliver one copy per final user with its own
`Delivered-To`. The hooks (per-user filter for Sieve, quota) are shown with small real doubles over
a real Store built by app.build_context.
"""

from __future__ import annotations

import ast
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailhaven import app, cleanup
from mailhaven.auth.users import UsersFile
from mailhaven.delivery.local import LocalDeliveryAgent
from mailhaven.errors import TempFailure
from mailhaven.message.headers import field_values
from mailhaven.seams import Filing, FilterJob

ALICE = "alice@example.test"
BOB = "bob@example.test"
TEAM = "team@example.test"
MSG = b"From: Sender <sender@sender.test>\r\nTo: team@example.test\r\nSubject: hi\r\n\r\nHello.\r\n"
SRC = Path(__file__).resolve().parents[2] / "src" / "mailhaven"


@pytest.fixture
async def ctx(make_config: object, users_file_path: Path) -> AsyncIterator[app.Context]:
    with UsersFile.edit(users_file_path) as uf:
        uf.add_alias(TEAM, [ALICE, BOB])
    cfg = make_config(hostname="mail.example.test")  # type: ignore[operator]
    context = app.build_context(cfg)
    await context.store.start()
    yield context
    await context.store.close()


async def inbox(ctx: app.Context, user: str, folder: str = "INBOX") -> list[bytes]:
    mb = await ctx.store.account(user).mailbox(folder)
    return [await mb.read(m.uid) for m in (await mb.snapshot()).messages]


def test_the_agent_is_the_only_caller_of_store_deliver() -> None:
    """Outside store/ itself, a `.deliver(...)` call on anything named store appears once: in
    delivery/local.py, the agent (the MX, cleanup and the queue each called it before)."""
    callers: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("store/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "deliver":
                target = ast.unparse(node.func.value)
                if "store" in target.lower():
                    callers.append(f"{rel}: {target}.deliver")
    assert callers == ["delivery/local.py: self.store.deliver"]


async def test_submission_to_an_alias_and_a_member_gives_each_final_user_one_copy(ctx: app.Context) -> None:
    # team@ reaches alice and bob, alice is also named (with a +tag, as a sub-address): one copy each.
    await cleanup.enqueue(ctx, "sender@sender.test", [TEAM, ALICE, "alice+news@example.test"], MSG, dkim=False)
    [to_alice] = await inbox(ctx, ALICE)
    [to_bob] = await inbox(ctx, BOB)
    for user, copy in ((ALICE, to_alice), (BOB, to_bob)):
        assert copy.startswith(f"Return-Path: <sender@sender.test>\r\nDelivered-To: {user}\r\n".encode())
        assert field_values(copy, "Delivered-To") == [user]  # RFC 9228: the final user, once
        assert copy.endswith(b"\r\n\r\nHello.\r\n")


async def test_a_forged_delivered_to_from_outside_stays_below_ours(ctx: app.Context) -> None:
    await cleanup.enqueue(ctx, "", [BOB], b"Delivered-To: someone@else.test\r\n" + MSG, dkim=False)
    [copy] = await inbox(ctx, BOB)
    assert copy.startswith(f"Return-Path: <>\r\nDelivered-To: {BOB}\r\n".encode())  # a bounce: <>
    assert field_values(copy, "Delivered-To") == [BOB, "someone@else.test"]


async def test_per_recipient_results_one_broken_mailbox_does_not_fail_the_others(ctx: app.Context) -> None:
    """The queue's way (agent.deliver): LMTP-like, one result per recipient."""
    bob_root = Path(ctx.config.mail_root) / "example.test" / "bob"
    bob_root.mkdir(parents=True)
    (bob_root / "new").write_bytes(b"not a directory")  # bob's store write fails for real
    agent = ctx.agent
    recipients = [agent.resolve(ALICE), agent.resolve(BOB), agent.resolve("nobody@example.test")]
    results = await agent.deliver(recipients, MSG, sender="sender@sender.test")
    assert [(r.recipient, r.delivered, r.temporary, r.code) for r in results] == [
        (ALICE, True, False, 250), (BOB, False, True, 451), ("nobody@example.test", False, False, 550)]
    assert results[2].enhanced == "5.1.1"
    assert len(await inbox(ctx, ALICE)) == 1


async def test_an_alias_recipient_fails_when_one_of_its_users_failed_and_the_rest_keep_their_copy(
        ctx: app.Context) -> None:
    bob_root = Path(ctx.config.mail_root) / "example.test" / "bob"
    bob_root.mkdir(parents=True)
    (bob_root / "new").write_bytes(b"not a directory")
    agent = ctx.agent
    [team, alice] = await agent.deliver([agent.resolve(TEAM), agent.resolve(ALICE)], MSG, sender="")
    assert (team.delivered, team.temporary) == (False, True)  # retried: bob has not got it
    assert alice.delivered
    assert len(await inbox(ctx, ALICE)) == 1  # one copy for alice, though both recipients reach her


async def test_deliver_all_is_all_or_nothing(ctx: app.Context) -> None:
    """The MX's and cleanup's way: one store write; a later user's failure leaves nothing anywhere."""
    bob_root = Path(ctx.config.mail_root) / "example.test" / "bob"
    bob_root.mkdir(parents=True)
    (bob_root / "new").write_bytes(b"not a directory")
    with pytest.raises(TempFailure):
        await ctx.agent.deliver_all([ctx.agent.resolve(TEAM)], MSG, sender="")
    assert await inbox(ctx, ALICE) == []


class SieveLike:
    """A per-user filter: alice's copy is filed into Work and kept, bob's discarded."""

    def __init__(self) -> None:
        self.jobs: list[FilterJob] = []

    async def file(self, job: FilterJob) -> Filing:
        self.jobs.append(job)
        if job.user == ALICE:
            return Filing(("Work", job.folder))  # fileinto "Work"; keep
        return Filing(())  # discard


class FullFor:
    def __init__(self, user: str) -> None:
        self.user = user

    async def admit(self, user: str, size: int) -> None:
        assert size > len(MSG)
        if user == self.user:
            raise TempFailure("Mailbox is full", code=452, enhanced="4.2.2")  # RFC 3463 X.2.2

    async def delivered(self, user: str) -> None:
        assert user != self.user


async def test_filter_hook_chooses_folders_per_user_and_sees_the_stored_message(ctx: app.Context) -> None:
    sieve = SieveLike()
    agent = LocalDeliveryAgent(ctx.store, lambda: ctx.directory, lambda: ctx.config.authserv_id, filter=sieve)
    [team] = await agent.deliver([agent.resolve(TEAM)], MSG, sender="s@sender.test", folder={ALICE: "Junk"})
    assert team.delivered
    assert [(j.user, j.recipients, j.folder) for j in sieve.jobs] == [(ALICE, (TEAM,), "Junk"), (BOB, (TEAM,), "INBOX")]
    assert sieve.jobs[0].message.startswith(f"Return-Path: <s@sender.test>\r\nDelivered-To: {ALICE}\r\n".encode())
    [work] = await inbox(ctx, ALICE, "Work")
    [junk] = await inbox(ctx, ALICE, "Junk")
    assert work == junk == sieve.jobs[0].message
    assert await inbox(ctx, BOB) == []
    # The folders of one user share one file (hard links); different users never do.
    root = Path(ctx.config.mail_root) / "example.test" / "alice"
    [w] = os.listdir(root / ".Work" / "new")
    [j] = os.listdir(root / ".Junk" / "new")
    assert os.stat(root / ".Work" / "new" / w).st_ino == os.stat(root / ".Junk" / "new" / j).st_ino


async def test_quota_hook_refuses_one_user_per_recipient_and_all_in_deliver_all(ctx: app.Context) -> None:
    agent = LocalDeliveryAgent(ctx.store, lambda: ctx.directory, lambda: ctx.config.authserv_id,
                               quota=FullFor(BOB))
    alice, bob = await agent.deliver([agent.resolve(ALICE), agent.resolve(BOB)], MSG, sender="")
    assert alice.delivered and (bob.code, bob.enhanced, bob.temporary) == (452, "4.2.2", True)
    with pytest.raises(TempFailure, match="full"):
        await agent.deliver_all([agent.resolve(ALICE), agent.resolve(BOB)], MSG, sender="")
    assert len(await inbox(ctx, ALICE)) == 1  # only the first, per-recipient delivery
