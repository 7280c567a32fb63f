"""The pending registry: ids, tokens, deadlines and claim-once, without sockets."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac

import pytest

from sssrd.pending import PendingFull, PendingRegistry, Rejection, WaitEnded


def run(coroutine):
    return asyncio.run(coroutine)


async def registered(registry: PendingRegistry, timeout: float = 30.0):
    return registry.register(asyncio.get_running_loop(), timeout, now_ms=1_000)


def test_ids_are_128_bit_hex_and_tokens_are_their_hmac():
    async def scenario():
        registry = PendingRegistry(10)
        first, second = await registered(registry), await registered(registry)
        assert len(first.request_id) == 32 and int(first.request_id, 16) >= 0
        assert first.request_id != second.request_id
        # HMAC-SHA256 of the id under the process secret, unpadded base64url, computed here
        # rather than by the registry's own token_for.
        digest = hmac.new(registry._secret, first.request_id.encode(), hashlib.sha256).digest()
        assert first.token == base64.urlsafe_b64encode(digest).decode().rstrip("=")
        assert PendingRegistry(10).token_for(first.request_id) != first.token  # per-process
        assert first.deadline_epoch_ms == 31_000

    run(scenario())


def test_a_callback_is_claimed_once_and_a_second_gets_409():
    async def scenario():
        registry = PendingRegistry(10)
        entry = await registered(registry)
        registry.claim(entry.request_id, entry.token, "stream")
        assert await entry.delivery == "stream"
        with pytest.raises(Rejection) as second:
            registry.claim(entry.request_id, entry.token, "other")
        assert (second.value.status, second.value.reason) == (409, "duplicate")

    run(scenario())


def test_claim_before_anyone_awaits_still_delivers():
    """A Lambda may call back before the invoke call returns."""

    async def scenario():
        registry = PendingRegistry(10)
        entry = await registered(registry)
        registry.claim(entry.request_id, entry.token, "early")
        await asyncio.sleep(0)
        assert await entry.delivery == "early"

    run(scenario())


def test_bad_token_is_401_and_changes_nothing():
    async def scenario():
        registry = PendingRegistry(10)
        entry = await registered(registry)
        for token in (None, "", "x" * 43, registry.token_for("0" * 32)):
            with pytest.raises(Rejection) as rejected:
                registry.claim(entry.request_id, token, "forged")
            assert rejected.value.status == 401
        assert not entry.delivery.done() and not entry.claimed

    run(scenario())


def test_malformed_ids_are_404():
    async def scenario():
        registry = PendingRegistry(10)
        for request_id in ("", "../admin", "A" * 32, "0" * 31, "0" * 33):
            with pytest.raises(Rejection) as rejected:
                registry.claim(request_id, "t", None)
            assert rejected.value.status == 404

    run(scenario())


def test_deadline_ends_the_wait_and_a_late_claim_gets_410():
    async def scenario():
        registry = PendingRegistry(10)
        entry = await registered(registry, timeout=0.01)
        with pytest.raises(WaitEnded) as ended:
            await entry.delivery
        assert ended.value.reason == "late"
        registry.release(entry, "late")
        with pytest.raises(Rejection) as rejected:
            registry.claim(entry.request_id, entry.token, "too late")
        assert (rejected.value.status, rejected.value.reason) == (410, "late")
        assert "deadline" in str(rejected.value)

    run(scenario())


def test_claim_after_delivery_says_already_answered():
    async def scenario():
        registry = PendingRegistry(10)
        entry = await registered(registry)
        registry.claim(entry.request_id, entry.token, "stream")
        registry.release(entry, "delivered")
        with pytest.raises(Rejection) as rejected:
            registry.claim(entry.request_id, entry.token, "again")
        assert rejected.value.status == 410 and "already" in str(rejected.value)

    run(scenario())


def test_limit_sheds_and_release_frees_the_slot_and_its_timer():
    async def scenario():
        registry = PendingRegistry(1)
        entry = await registered(registry)
        with pytest.raises(PendingFull):
            await registered(registry)
        registry.release(entry, "delivered")
        assert entry.timer is None and len(registry) == 0
        await registered(registry)

    run(scenario())


def test_finished_ids_are_remembered_only_up_to_the_bound():
    async def scenario():
        registry = PendingRegistry(100, remembered=3)
        entries = [await registered(registry) for _ in range(5)]
        for entry in entries:
            registry.release(entry, "delivered")
        assert len(registry._finished) == 3

    run(scenario())
