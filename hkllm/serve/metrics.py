"""Prometheus metrics for `GET /metrics` (names follow vLLM's where one exists)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self, stats):
        """stats: a callable giving the engine's {"waiting": n, "running": n} at scrape time."""
        self.registry = r = CollectorRegistry()
        self.requests = Counter("hkllm_requests", "Requests answered, by endpoint and HTTP status",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("hkllm_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("hkllm_generation_tokens", "Tokens generated", registry=r)
        self.rejections = Counter("hkllm_rejections", "Requests refused, by reason", ["reason"], registry=r)
        self.cache = Counter("hkllm_cache_lookups", "Consistency-cache lookups, by result", ["result"], registry=r)
        self.ttft = Histogram("hkllm_time_to_first_token_seconds", "Time to first token", buckets=LATENCY_BUCKETS,
                              registry=r)
        self.tpot = Histogram("hkllm_time_per_output_token_seconds", "Time per output token after the first",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("hkllm_e2e_request_latency_seconds", "Request latency", buckets=LATENCY_BUCKETS,
                             registry=r)
        waiting = Gauge("hkllm_num_requests_waiting", "Requests queued in the engine", registry=r)
        running = Gauge("hkllm_num_requests_running", "Requests being decoded", registry=r)
        waiting.set_function(lambda: stats()["waiting"])
        running.set_function(lambda: stats()["running"])
