"""Traces: the tracer every span of the service comes from, the W3C trace context for calls to other services, and
the set-up of the OpenTelemetry SDK when the OTEL_* settings ask for it (docs/tracing.md).

Spans are made through OpenTelemetry's API (a dependency of FastAPI), whose tracer hands out non-recording spans
until an SDK is installed: with tracing off a span costs a function call, and nothing of the SDK or an exporter is
imported. No span is made per token: a streamed answer's spans are opened and closed around it, and what it counted
is set on them at its end. Shared by llm/ and rag/ (rag depends on llm, never the reverse).
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, TypeVar

from opentelemetry import propagate, trace

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from config import Settings

logger = logging.getLogger(__name__)

tracer = trace.get_tracer("rag-chat")


H = TypeVar("H", bound=MutableMapping[str, str])


def with_trace_context(headers: H) -> H:
    """`headers`, with the current span's `traceparent` added for a call to another service (an LLM upstream, the
    embeddings server), so that the trace continues there. Untouched when no span is current."""
    if trace.get_current_span().get_span_context().is_valid:
        propagate.inject(headers)
    return headers


def traces_endpoint(settings: Settings) -> str | None:
    """Where traces go; None when tracing is off."""
    if settings.otel_exporter_otlp_traces_endpoint:
        return settings.otel_exporter_otlp_traces_endpoint
    if settings.otel_exporter_otlp_endpoint:
        return settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
    return None


def configure_tracing(settings: Settings) -> TracerProvider | None:
    """Install the SDK as this process's tracer provider, exporting in batches over OTLP/HTTP, when an endpoint is
    set; None (and nothing imported) when not. A process serves one app: the provider is set once."""
    endpoint = traces_endpoint(settings)
    if endpoint is None:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise RuntimeError(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set, but the OpenTelemetry SDK is not installed: "
            "pip install -r requirements-otel.txt"
        ) from exc
    headers = {}
    if settings.otel_exporter_otlp_headers is not None:
        for pair in settings.otel_exporter_otlp_headers.get_secret_value().split(","):
            name, _, value = pair.partition("=")
            if name.strip():
                headers[name.strip()] = value.strip()
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.otel_service_name}),
        sampler=_sampler(settings.otel_traces_sampler, settings.otel_traces_sampler_arg),
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, headers=headers)))
    trace.set_tracer_provider(provider)
    logger.info("tracing: spans go to %s (sampler %s)", endpoint, settings.otel_traces_sampler)
    return provider


def _sampler(name: str, ratio: float):  # type: ignore[no-untyped-def]
    from opentelemetry.sdk.trace import sampling

    samplers = {
        "always_on": lambda: sampling.ALWAYS_ON,
        "always_off": lambda: sampling.ALWAYS_OFF,
        "traceidratio": lambda: sampling.TraceIdRatioBased(ratio),
        "parentbased_always_on": lambda: sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": lambda: sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": lambda: sampling.ParentBased(sampling.TraceIdRatioBased(ratio)),
    }
    return samplers[name]()
