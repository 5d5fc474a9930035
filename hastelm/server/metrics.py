"""Prometheus text exposition of the server's counters, gauges and latency histograms.

Written by hand (the format is a few lines of text) rather than pulling in a client library.
Everything is updated on the event loop thread, so no locking is needed.
"""
from __future__ import annotations

import bisect
from typing import Any

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name, self.help, self.buckets = name, help_text, buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)
        if i < len(self.counts):
            self.counts[i] += 1
        self.sum += value
        self.count += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        total = 0
        for bound, n in zip(self.buckets, self.counts):
            total += n
            lines.append(f'{self.name}_bucket{{le="{bound}"}} {total}')
        lines += [f'{self.name}_bucket{{le="+Inf"}} {self.count}', f"{self.name}_sum {self.sum:.6f}",
                  f"{self.name}_count {self.count}"]
        return lines


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[str, int] = {}        # by outcome: stop, length, cancelled, error, rejected
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.draft_tokens = 0
        self.accepted_tokens = 0
        self.ttft = Histogram("hastelm_time_to_first_token_seconds", "Time from request to first token.")
        self.tpot = Histogram("hastelm_time_per_output_token_seconds",
                              "Mean time between output tokens after the first, per request.")

    def count_request(self, outcome: str) -> None:
        self.requests[outcome] = self.requests.get(outcome, 0) + 1

    def render(self, scheduler: Any) -> str:
        lines = ["# HELP hastelm_requests_total Finished requests (sequences) by outcome.",
                 "# TYPE hastelm_requests_total counter"]
        lines += [f'hastelm_requests_total{{outcome="{k}"}} {v}' for k, v in sorted(self.requests.items())]
        counters = [("hastelm_prompt_tokens_total", "Prompt tokens processed.", self.prompt_tokens),
                    ("hastelm_generation_tokens_total", "Output tokens generated.", self.generation_tokens),
                    ("hastelm_spec_draft_tokens_total", "Speculative draft tokens verified.", self.draft_tokens),
                    ("hastelm_spec_accepted_tokens_total", "Speculative draft tokens accepted.",
                     self.accepted_tokens),
                    ("hastelm_decode_steps_total", "Batched decode forwards.", scheduler.decode_steps),
                    ("hastelm_decode_rows_total", "Sequences carried by batched decode forwards.",
                     scheduler.decode_rows)]
        for name, help_text, value in counters:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {value}"]
        rate = self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0
        gauges = [("hastelm_queue_depth", "Requests waiting for a batch slot.", scheduler.queue_depth),
                  ("hastelm_running_requests", "Requests holding a batch slot.", scheduler.running),
                  ("hastelm_batch_slots", "Batch slots (max concurrent sequences).", scheduler.max_batch),
                  ("hastelm_spec_acceptance_rate", "Accepted over proposed draft tokens.", f"{rate:.6f}")]
        for name, help_text, value in gauges:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
        lines += self.ttft.render() + self.tpot.render()
        return "\n".join(lines) + "\n"
