"""The server's Prometheus counters, gauges and latency histograms, through `prometheus_client`.

Each app owns its `CollectorRegistry` (several servers can live in one process, as in the tests),
so nothing is registered in the library's global default registry. Counters and histograms are
updated where requests are handled (`generation.py`); the gauges and the scheduler's own counters
are read from the scheduler when /metrics is scraped, by a custom collector.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST", "LATENCY_BUCKETS", "Metrics", "generate_latest"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """One app's metrics. `scheduler` is set by the /metrics route (the app's state holds both);
    until then the scheduler's gauges and counters are left out of the exposition."""

    def __init__(self, scheduler: Any = None) -> None:
        self.scheduler = scheduler
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # prometheus_client appends the `_total` suffix to counter names
        self.requests = Counter("hastelm_requests", "Finished requests (sequences) by outcome.",
                                ["outcome"], registry=r)     # stop, length, cancelled, error, rejected
        self.prompt_tokens = Counter("hastelm_prompt_tokens", "Prompt tokens processed.", registry=r)
        self.generation_tokens = Counter("hastelm_generation_tokens", "Output tokens generated.", registry=r)
        self.draft_tokens = Counter("hastelm_spec_draft_tokens", "Speculative draft tokens verified.", registry=r)
        self.accepted_tokens = Counter("hastelm_spec_accepted_tokens", "Speculative draft tokens accepted.",
                                       registry=r)
        self.ttft = Histogram("hastelm_time_to_first_token_seconds", "Time from request to first token.",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("hastelm_time_per_output_token_seconds",
                              "Mean time between output tokens after the first, per request.",
                              buckets=LATENCY_BUCKETS, registry=r)
        # plain totals for the acceptance rate: a collector cannot read the registry it is part of
        self._drafted = 0
        self._accepted = 0
        r.register(_SchedulerCollector(self))

    def count_request(self, outcome: str) -> None:
        self.requests.labels(outcome=outcome).inc()

    def count_step(self, tokens: int, proposed: int, accepted: int) -> None:
        """One step's output tokens and speculative draft tokens (proposed, accepted)."""
        if tokens:
            self.generation_tokens.inc(tokens)
        if proposed:
            self.draft_tokens.inc(proposed)
            self._drafted += proposed
        if accepted:
            self.accepted_tokens.inc(accepted)
            self._accepted += accepted

    @property
    def acceptance_rate(self) -> float:
        return self._accepted / self._drafted if self._drafted else 0.0

    def exposition(self) -> bytes:
        """The text exposition of every metric (what /metrics serves as CONTENT_TYPE_LATEST)."""
        return generate_latest(self.registry)


class _SchedulerCollector(Collector):
    """Values read at scrape time: the scheduler's queue, slots and decode counters, and the
    speculative acceptance rate."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterator[Metric]:
        # the names this collector owns, so the registry refuses a clashing metric at registration
        return self._families(_NO_SCHEDULER)

    def collect(self) -> Iterator[Metric]:
        return self._families(self.metrics.scheduler)

    def _families(self, scheduler: Any) -> Iterator[Metric]:
        yield GaugeMetricFamily("hastelm_spec_acceptance_rate", "Accepted over proposed draft tokens.",
                                value=self.metrics.acceptance_rate)
        if scheduler is None:
            return
        for name, help_text, attr in _SCHEDULER_COUNTERS:
            yield CounterMetricFamily(name, help_text, value=getattr(scheduler, attr))
        for name, help_text, attr in _SCHEDULER_GAUGES:
            yield GaugeMetricFamily(name, help_text, value=getattr(scheduler, attr))


_SCHEDULER_COUNTERS = (("hastelm_decode_steps", "Batched decode forwards.", "decode_steps"),
                       ("hastelm_decode_rows", "Sequences carried by batched decode forwards.", "decode_rows"))
_SCHEDULER_GAUGES = (("hastelm_queue_depth", "Requests waiting for a batch slot.", "queue_depth"),
                     ("hastelm_running_requests", "Requests holding a batch slot.", "running"),
                     ("hastelm_batch_slots", "Batch slots (max concurrent sequences).", "max_batch"))


class _NoScheduler:
    """Stands in for the scheduler when the registry asks for names only."""
    decode_steps = decode_rows = queue_depth = running = max_batch = 0


_NO_SCHEDULER = _NoScheduler()
