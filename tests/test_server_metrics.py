"""/metrics through prometheus_client: the exposition parses, counters move with requests, and
two servers in one process keep separate registries."""
from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hastelm.server.metrics import LATENCY_BUCKETS, Metrics
from server_support import RunningServer


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by (name, labels)."""
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


@pytest.fixture(scope="module")
def servers(llm_fast):
    first = RunningServer(llm_fast, max_batch=2, max_queue=4, api_key=None)
    second = RunningServer(llm_fast, max_batch=3, max_queue=4, api_key=None)   # same process, own registry
    yield first, second
    first.stop()
    second.stop()


def test_counters_increase_after_a_request(servers):
    first, second = servers
    before = scrape(first.url)
    for name in ("hastelm_queue_depth", "hastelm_running_requests", "hastelm_spec_acceptance_rate",
                 "hastelm_decode_steps_total", "hastelm_decode_rows_total", "hastelm_prompt_tokens_total",
                 "hastelm_generation_tokens_total", "hastelm_spec_draft_tokens_total",
                 "hastelm_spec_accepted_tokens_total"):
        assert (name, ()) in before, name
    assert before[("hastelm_batch_slots", ())] == 2
    reply = first.openai().completions.create(model="smollm2-135m", prompt="One, two, three,", max_tokens=5,
                                              temperature=0)
    first.wait_idle()
    after = scrape(first.url)
    stop = ("hastelm_requests_total", (("outcome", reply.choices[0].finish_reason),))
    assert after[stop] == before.get(stop, 0) + 1
    assert after[("hastelm_generation_tokens_total", ())] == (before[("hastelm_generation_tokens_total", ())]
                                                              + reply.usage.completion_tokens)
    assert after[("hastelm_prompt_tokens_total", ())] == (before[("hastelm_prompt_tokens_total", ())]
                                                          + reply.usage.prompt_tokens)
    assert after[("hastelm_decode_steps_total", ())] > before[("hastelm_decode_steps_total", ())]
    ttft = "hastelm_time_to_first_token_seconds"
    assert after[(f"{ttft}_count", ())] == before[(f"{ttft}_count", ())] + 1
    assert [le for (name, labels) in after if name == f"{ttft}_bucket" for _, le in labels] == \
        [str(b) for b in LATENCY_BUCKETS] + ["+Inf"]
    # the other server saw none of it
    other = scrape(second.url)
    assert other[("hastelm_batch_slots", ())] == 3
    assert other[("hastelm_generation_tokens_total", ())] == 0
    assert (stop[0], stop[1]) not in other


def test_acceptance_rate_and_names():
    m = Metrics()          # no scheduler yet: only the metrics this object records
    m.count_step(tokens=3, proposed=4, accepted=3)
    m.count_request("stop")
    samples = {s.name: s.value for f in text_string_to_metric_families(m.exposition().decode())
               for s in f.samples}
    assert samples["hastelm_spec_acceptance_rate"] == 0.75
    assert samples["hastelm_spec_draft_tokens_total"] == 4 and samples["hastelm_requests_total"] == 1
    assert "hastelm_queue_depth" not in samples
    Metrics()              # a second registry: no duplicate-name clash with the first
