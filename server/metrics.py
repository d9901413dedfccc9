"""Prometheus metrics, one registry per app (so several apps can live in one process, as in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("vssm_requests", "HTTP requests", ["route", "method", "status"], registry=r)
        self.latency = Histogram("vssm_request_seconds", "HTTP request latency", ["route"], buckets=LATENCY, registry=r)
        self.first_chunk = Histogram(
            "vssm_first_chunk_seconds", "time to the first streamed chunk", ["route"], buckets=LATENCY, registry=r
        )
        self.tokens_generated = Counter("vssm_tokens_generated", "tokens generated", ["model"], registry=r)
        self.batch_rows = Histogram(
            "vssm_batch_rows", "rows per model call", ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r
        )
        # a job's time from the queue to its result, and the model call's own time in the worker (the
        # state decoded, the model run, the next state encoded): their difference is the queue and the
        # hand-off to the worker thread; a request's time beyond its jobs is the route's own
        self.job_seconds = Histogram(
            "vssm_job_seconds", "batcher job: queued to result", ["model"], buckets=LATENCY, registry=r
        )
        self.model_seconds = Histogram(
            "vssm_model_seconds", "one batched model call in the worker", ["model"], buckets=LATENCY, registry=r
        )
        self.queue_depth = Gauge("vssm_queue_depth", "jobs waiting for the batcher", ["model"], registry=r)
        self.in_flight = Gauge("vssm_in_flight", "admitted requests doing model work", registry=r)
        self.state_bytes = Histogram(
            "vssm_state_bytes", "serialised session state size", buckets=(1e3, 1e4, 1e5, 3e5, 1e6, 3e6, 1e7), registry=r
        )
        self.store_latency = Histogram(
            "vssm_store_seconds", "session store call latency", ["op"], buckets=LATENCY, registry=r
        )
        self.store_errors = Counter("vssm_store_errors", "session store failures", ["op"], registry=r)
        self.sessions = Counter("vssm_sessions", "session events (expired: looked up but gone)", ["event"], registry=r)
