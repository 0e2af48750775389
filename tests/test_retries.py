"""The retry policy of the streaming request, against the `openai` SDK's own constants and rules."""

from __future__ import annotations

import email.utils
import time

import pytest
from openai import _constants as sdk

from llm.retries import (
    INITIAL_RETRY_DELAY,
    MAX_RETRY_AFTER_DELAY,
    MAX_RETRY_DELAY,
    retry_after_seconds,
    retry_delay,
    should_retry,
)


def test_the_constants_are_the_sdks() -> None:
    assert (INITIAL_RETRY_DELAY, MAX_RETRY_DELAY, MAX_RETRY_AFTER_DELAY) == (
        sdk.INITIAL_RETRY_DELAY,
        sdk.MAX_RETRY_DELAY,
        sdk.MAX_RETRY_AFTER_DELAY,
    )


@pytest.mark.parametrize(
    ("status", "retried"), [(408, True), (409, True), (429, True), (500, True), (503, True), (400, False), (401, False)]
)
def test_statuses_worth_a_retry(status: int, retried: bool) -> None:
    assert should_retry(status, {}) is retried


def test_the_servers_verdict_overrules_the_status() -> None:
    assert should_retry(400, {"x-should-retry": "true"})
    assert not should_retry(503, {"x-should-retry": "false"})


def test_a_wait_longer_than_two_minutes_is_not_retried() -> None:
    assert not should_retry(429, {"retry-after": "121"})
    assert should_retry(429, {"retry-after": "120"})


def test_retry_after_in_each_form() -> None:
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8 <= (retry_after_seconds({"retry-after": in_ten}) or 0) <= 10
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_the_delay_is_what_the_server_asked_for() -> None:
    assert retry_delay(0, {"retry-after": "7"}) == 7.0


@pytest.mark.parametrize(("retries_taken", "full"), [(0, 0.5), (1, 1.0), (3, 4.0), (4, 8.0), (10, 8.0)])
def test_the_backoff_doubles_up_to_its_cap_less_some_jitter(retries_taken: int, full: float) -> None:
    delays = [retry_delay(retries_taken, None) for _ in range(200)]
    assert all(0.75 * full <= delay <= full for delay in delays)
    assert max(delays) - min(delays) > 0  # jittered, so that clients told to wait do not all come back at once
    # A wait outside (0, 120] s is not honoured: the backoff applies.
    assert 0.75 * full <= retry_delay(retries_taken, {"retry-after": "0"}) <= full
