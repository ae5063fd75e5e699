"""The server's counters, in Prometheus' text exposition format (``GET /metrics``), without a client
library: counters, gauges read at scrape time, and cumulative histograms.

>>> m = Metrics()
>>> m.request("/v1/completions", 200, 0.25)
>>> text = m.render({"duplex_queue_depth": ("Requests waiting for a batch row.", 3)})
>>> 'duplex_requests_total{endpoint="/v1/completions",status="200"} 1' in text
True
>>> 'duplex_request_latency_seconds_bucket{endpoint="/v1/completions",le="0.5"} 1' in text
True
>>> "duplex_queue_depth 3" in text
True
"""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1
        self.total += 1
        self.sum += value


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """Thread-safe: handlers record from the event loop, the engine thread from its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, _Histogram] = {}
        self.ttft = _Histogram(LATENCY_BUCKETS)
        self.batch = _Histogram(BATCH_BUCKETS)
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.engine_steps = 0
        self.engine_seconds = 0.0
        self.aborted = 0

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1
            self.latency.setdefault(endpoint, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def first_token(self, seconds: float) -> None:
        with self._lock:
            self.ttft.observe(seconds)

    def tokens(self, prompt: int = 0, generated: int = 0) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.generated_tokens += generated

    def step(self, seconds: float, batch: int = 0) -> None:
        """One engine step of ``seconds`` that decoded ``batch`` requests together (0: none, it only
        dropped aborted ones)."""
        with self._lock:
            self.engine_steps += 1
            self.engine_seconds += seconds
            if batch > 0:
                self.batch.observe(batch)

    def abort(self) -> None:
        with self._lock:
            self.aborted += 1

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        """The exposition text; ``gauges``: name → (help, value) read by the caller at scrape time."""
        out: list[str] = []

        def head(name: str, kind: str, text: str) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")

        def histogram(name: str, h: _Histogram, **labels: str) -> None:
            for b, c in zip(h.buckets, h.counts):
                out.append(f"{name}_bucket{_labels(**labels, le=repr(b))} {c}")
            out.append(f"{name}_bucket{_labels(**labels, le='+Inf')} {h.total}")
            out.append(f"{name}_sum{_labels(**labels)} {h.sum:.6f}")
            out.append(f"{name}_count{_labels(**labels)} {h.total}")

        with self._lock:
            head("duplex_requests_total", "counter", "HTTP requests answered, by endpoint and status.")
            for (endpoint, status), n in sorted(self.requests.items()):
                out.append(f"duplex_requests_total{_labels(endpoint=endpoint, status=str(status))} {n}")
            head("duplex_request_latency_seconds", "histogram",
                 "Time from a request's arrival to its last byte, by endpoint.")
            for endpoint, h in sorted(self.latency.items()):
                histogram("duplex_request_latency_seconds", h, endpoint=endpoint)
            head("duplex_time_to_first_token_seconds", "histogram",
                 "Time from a generation request's arrival to its first generated token.")
            histogram("duplex_time_to_first_token_seconds", self.ttft)
            head("duplex_step_batch_size", "histogram", "Generation requests decoded together, per engine step.")
            histogram("duplex_step_batch_size", self.batch)
            for name, text, value in (
                ("duplex_prompt_tokens_total", "Prompt tokens of generation requests.", self.prompt_tokens),
                ("duplex_generated_tokens_total", "Tokens generated.", self.generated_tokens),
                ("duplex_engine_steps_total", "Decoding steps the engine ran.", self.engine_steps),
                ("duplex_engine_step_seconds_total", "Time spent in decoding steps.", self.engine_seconds),
                ("duplex_aborted_requests_total", "Generations stopped early: client gone or timed out.",
                 self.aborted),
            ):
                head(name, "counter", text)
                out.append(f"{name} {value:.6f}" if isinstance(value, float) else f"{name} {value}")
        for name, (text, value) in gauges.items():
            head(name, "gauge", text)
            out.append(f"{name} {value}")
        return "\n".join(out) + "\n"


__all__ = ["Metrics"]
