"""Prometheus metrics, kept in-process and rendered in the text exposition format at `GET /metrics`.

A small registry of our own (counters, gauges, histograms with labels) rather than a dependency: the service needs
a dozen series. Each worker process keeps its own counts, as Prometheus' client does without its multiprocess mode.
The chat pipeline reports to `ChatMetrics` through its observer hooks, so every transport is counted the same way.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

from rag.types import ChatEvent, ErrorEvent, TokenEvent
from rag.usage.ledger import RowKey

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
Labels = tuple[tuple[str, str], ...]


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in labels)
    return "{" + inner + "}"


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_: str) -> None:
        self.name = name
        self.help = help_
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_: str) -> None:
        super().__init__(name, help_)
        self._values: dict[Labels, float] = defaultdict(float)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items())) if labels else ()  # () without labels: counted once per token
        with self._lock:
            self._values[key] += amount

    def render(self) -> list[str]:
        return [f"{self.name}{_labels(k)} {v:g}" for k, v in sorted(self._values.items())]


class Gauge(_Metric):
    kind = "gauge"

    def __init__(self, name: str, help_: str, read: Callable[[], float] | None = None) -> None:
        super().__init__(name, help_)
        self._value = 0.0
        self._read = read  # a gauge read at scrape time, such as the store's size

    def read_from(self, read: Callable[[], float]) -> None:
        self._read = read

    def add(self, amount: float) -> None:
        with self._lock:
            self._value += amount

    def value(self) -> float:
        return self._read() if self._read is not None else self._value

    def render(self) -> list[str]:
        return [f"{self.name} {self.value():g}"]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_: str, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help_)
        self.buckets = tuple(buckets)
        self._series: dict[Labels, list[float]] = {}  # bucket counts..., +Inf count, sum

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[i] += 1
            series[-2] += 1
            series[-1] += value

    def render(self) -> list[str]:
        lines = []
        for key, series in sorted(self._series.items()):
            for bound, count in zip(self.buckets, series, strict=False):
                lines.append(f"{self.name}_bucket{_labels((*key, ('le', f'{bound:g}')))} {count:g}")
            lines.append(f"{self.name}_bucket{_labels((*key, ('le', '+Inf')))} {series[-2]:g}")
            lines.append(f"{self.name}_count{_labels(key)} {series[-2]:g}")
            lines.append(f"{self.name}_sum{_labels(key)} {series[-1]:g}")
        return lines


class LabelledReading(_Metric):
    """A series per label value, read when rendered (the chat upstreams' state, with LLM_UPSTREAMS)."""

    def __init__(self, name: str, help_: str, kind: str, label: str) -> None:
        super().__init__(name, help_)
        self.kind = kind
        self._label = label
        self._read: Callable[[], dict[str, float]] = dict

    def read_from(self, read: Callable[[], dict[str, float]]) -> None:
        self._read = read

    def render(self) -> list[str]:
        return [f"{self.name}{_labels(((self._label, k),))} {v:g}" for k, v in sorted(self._read().items())]


class ChatMetrics:
    """Everything `/metrics` reports. Also the pipeline's observer (`stream_opened`, `on_event`, ...)."""

    def __init__(self) -> None:
        self.requests = Counter("rag_http_requests_total", "HTTP requests by route, method and status.")
        self.latency = Histogram("rag_http_request_duration_seconds", "Time to the end of the response, by route.")
        self.ttft = Histogram("rag_time_to_first_token_seconds", "From the request to the first answer token.")
        self.tokens = Counter("rag_tokens_streamed_total", "Answer tokens sent to clients.")
        self.active_streams = Gauge("rag_active_streams", "Answers being streamed now.")
        self.upstream_errors = Counter("rag_upstream_errors_total", "Model failures, by error type.")
        self.usage_tokens = Counter(
            "rag_usage_tokens_total",
            "Tokens counted by usage accounting, by organisation and type (USAGE_METRICS_PER_ORG).",
        )
        self.mcp_calls = Counter("rag_mcp_tool_calls_total", "MCP tool calls, by tool and outcome (ok or error type).")
        self.store_chunks = Gauge("rag_store_chunks", "Chunks in the vector store.", read=lambda: math.nan)
        self.resumable_running = Gauge(
            "rag_resumable_answers_running", "Resumable answers produced by this process now.", read=lambda: math.nan
        )
        self.upstream_in_flight = LabelledReading(
            "rag_upstream_in_flight", "Answers in flight, by chat upstream.", "gauge", "upstream"
        )
        self.upstream_failures = LabelledReading(
            "rag_upstream_failures_total", "Failed attempts, by chat upstream.", "counter", "upstream"
        )
        self.upstream_cooling = LabelledReading(
            "rag_upstream_cooldown_seconds",
            "Seconds left of a chat upstream's cool-down (0: in use).",
            "gauge",
            "upstream",
        )
        self._all: list[_Metric] = [
            self.requests,
            self.latency,
            self.ttft,
            self.tokens,
            self.active_streams,
            self.upstream_errors,
            self.mcp_calls,
            self.usage_tokens,
            self.store_chunks,
            self.resumable_running,
            self.upstream_in_flight,
            self.upstream_failures,
            self.upstream_cooling,
        ]

    def count_usage(self, key: RowKey, counts: dict[str, int]) -> None:
        """One usage count, by organisation: a series per organisation, so only when asked for (label cardinality)."""
        for name, kind in (
            ("prompt_tokens", "prompt"),
            ("completion_tokens", "completion"),
            ("embedded_tokens", "embedded"),
        ):
            if counts.get(name):
                self.usage_tokens.inc(counts[name], org=key.org_id or "-", type=kind)

    def watch_upstreams(self, states: Callable[[], list[dict[str, object]]]) -> None:
        """Report each chat upstream by name, from the router's `states()`."""

        def column(key: str) -> Callable[[], dict[str, float]]:
            return lambda: {str(s["name"]): float(s[key]) for s in states()}  # type: ignore[arg-type]

        self.upstream_in_flight.read_from(column("in_flight"))
        self.upstream_failures.read_from(column("failures"))
        self.upstream_cooling.read_from(column("cooldown_seconds"))

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._all:
            lines += metric.header() + metric.render()  # type: ignore[attr-defined]
        return "\n".join(lines) + "\n"

    # --- the pipeline's observer hooks ---------------------------------------------------------------

    def start_failed(self, error_type: str) -> None:
        self.upstream_errors.inc(type=error_type)

    def stream_opened(self, started_at: float) -> StreamObservation:
        self.active_streams.add(1)
        return StreamObservation(self, started_at)


class StreamObservation:
    """What one answer reports while it streams."""

    def __init__(self, metrics: ChatMetrics, started_at: float) -> None:
        self._metrics = metrics
        self._started_at = started_at
        self._tokens = 0
        self._closed = False

    def on_event(self, event: ChatEvent) -> None:
        if type(event) is TokenEvent:
            # Counted here and added to the shared counter when the answer ends: the counter takes a lock.
            self._tokens += 1
            if self._tokens == 1:
                self._metrics.ttft.observe(time.monotonic() - self._started_at)
        elif isinstance(event, ErrorEvent):
            self._metrics.upstream_errors.inc(type=event.type)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._metrics.active_streams.add(-1)
            if self._tokens:
                self._metrics.tokens.inc(self._tokens)
