"""Prometheus metrics (prometheus-client), served when `[metrics] listen` is set."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

processed = Counter(
    "mailcare_messages_processed_total",
    "Incoming messages by outcome",
    ["outcome"],
    registry=REGISTRY,
)
sent = Counter(
    "mailcare_mails_sent_total",
    "Mails sent by kind (ack, redirect, relay...)",
    ["kind"],
    registry=REGISTRY,
)
suppressed = Counter(
    "mailcare_autoreplies_suppressed_total",
    "Automatic mails not sent, by reason",
    ["reason"],
    registry=REGISTRY,
)
reconnects = Counter("mailcare_imap_reconnects_total", "IMAP reconnects", registry=REGISTRY)
send_failures = Counter(
    "mailcare_send_failures_total", "SMTP failures by kind", ["kind"], registry=REGISTRY
)
outbox_depth = Gauge("mailcare_outbox_pending", "Rows waiting in the outbox", registry=REGISTRY)
outbox_oldest = Gauge(
    "mailcare_outbox_oldest_seconds", "Age of the oldest pending row", registry=REGISTRY
)
processing_seconds = Histogram(
    "mailcare_processing_seconds",
    "Time to process one fetched batch, per message",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
    registry=REGISTRY,
)
ack_latency = Histogram(
    "mailcare_ack_latency_seconds",
    "From a mail's processing to its ack accepted by SMTP",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
    registry=REGISTRY,
)


def serve(listen: str) -> None:
    """Start the HTTP endpoint on host:port (loopback by default in the sample config)."""
    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host or "127.0.0.1", registry=REGISTRY)


def record_plan(actions: list[str], events: list[tuple[str, str]], new: bool) -> None:
    processed.labels("new_case" if new else "followup").inc()
    for kind, reason in events:
        if kind == "suppressed_autoreply":
            suppressed.labels(reason.split(":")[0]).inc()
