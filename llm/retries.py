"""When and after how long a failed upstream request is tried again: the `openai` SDK's documented policy, for the
streaming request that `llm/openai_client.py` sends itself.

The SDK retries connection errors, timeouts, 408, 409, 429 and 5xx answers (an `x-should-retry` header overrules
the status), waits what `Retry-After` or `Retry-After-Ms` asks when that is at most two minutes, and otherwise backs
off exponentially from half a second to at most 8 seconds, minus up to 25% of jitter. An answer that asks for a
longer wait is not retried. The constants are the SDK's (openai 3.51.0, `openai/_constants.py`; a test checks them).
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Mapping

INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER_DELAY = 120.0
_RETRIED_STATUSES = frozenset({408, 409, 429})


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The wait the server asked for, in seconds: `retry-after-ms`, then `retry-after` as seconds or as a date."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return float(value) / divisor
        except ValueError:
            continue
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        parsed = email.utils.parsedate_tz(value)
        return None if parsed is None else float(email.utils.mktime_tz(parsed) - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def should_retry(status: int, headers: Mapping[str, str]) -> bool:
    """Whether an error answer is worth another attempt."""
    wait = retry_after_seconds(headers)
    if wait is not None and math.isfinite(wait) and wait > MAX_RETRY_AFTER_DELAY:
        return False
    verdict = headers.get("x-should-retry")
    if verdict in ("true", "false"):
        return verdict == "true"
    return status in _RETRIED_STATUSES or status >= 500


def retry_delay(retries_taken: int, headers: Mapping[str, str] | None) -> float:
    """Seconds to wait before retry number `retries_taken + 1`."""
    wait = retry_after_seconds(headers) if headers is not None else None
    if wait is not None and math.isfinite(wait) and 0 < wait <= MAX_RETRY_AFTER_DELAY:
        return wait
    backoff = min(INITIAL_RETRY_DELAY * 2.0 ** min(retries_taken, 1000), MAX_RETRY_DELAY)
    return backoff * (1 - 0.25 * random.random())
