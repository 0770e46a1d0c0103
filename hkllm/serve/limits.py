"""Per-key rate limits (requests and tokens per minute) and the bounded request queue.

Limits are kept in memory over a sliding 60-second window: exact, cheap, and reset on restart
(run one gateway per model, or put a shared limiter in front, to limit across replicas).
A refusal says how long to wait, which the gateway sends as `Retry-After`.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque

from hkllm.serve.protocol import ApiError

WINDOW_S = 60.0


class RateLimiter:
    def __init__(self, default_rpm: int = 0, default_tpm: int = 0):
        self.default_rpm, self.default_tpm = default_rpm, default_tpm
        self._requests: dict[str, deque[float]] = defaultdict(deque)
        self._tokens: dict[str, deque[tuple[float, int]]] = defaultdict(deque)

    def admit(self, key_id: str, rpm: int | None, tpm: int | None) -> None:
        """Count one request for this key, or raise a 429 ApiError saying when to retry."""
        now = time.monotonic()
        rpm = self.default_rpm if rpm is None else rpm
        tpm = self.default_tpm if tpm is None else tpm
        reqs, toks = self._requests[key_id], self._tokens[key_id]
        while reqs and reqs[0] <= now - WINDOW_S:
            reqs.popleft()
        while toks and toks[0][0] <= now - WINDOW_S:
            toks.popleft()
        if rpm and len(reqs) >= rpm:
            raise ApiError(429, f"rate limit: {rpm} requests per minute for this key", "rate_limit_requests",
                           retry_after=reqs[0] + WINDOW_S - now)
        if tpm and sum(n for _, n in toks) >= tpm:
            raise ApiError(429, f"rate limit: {tpm} tokens per minute for this key", "rate_limit_tokens",
                           retry_after=toks[0][0] + WINDOW_S - now)
        reqs.append(now)

    def spend(self, key_id: str, tokens: int) -> None:
        self._tokens[key_id].append((time.monotonic(), tokens))


class Admission:
    """At most `capacity` requests inside the engine (running + queued); the rest get a 429.

    Refusing early beats queueing without bound: a client told "retry in 1 s" can back off or
    go to another replica, while a client stuck in a long queue just times out.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.inside = 0

    def acquire(self) -> None:
        if self.inside >= self.capacity:
            raise ApiError(429, f"server busy: {self.inside} requests in progress, the queue is full; retry shortly",
                           "queue_full", retry_after=1)
        self.inside += 1

    def release(self) -> None:
        self.inside -= 1
