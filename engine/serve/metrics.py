"""`GET /metrics`: the gateway's counters in Prometheus' text format (version 0.0.4).

Requests by endpoint and status, latency histograms by endpoint, the EmoNet batches formed (each counted once,
by its id, however many requests it answered) with their sizes and times, and the queue depth (requests the gateway is
working on now). Counters live in the gateway process: one gateway replica sees every request.
"""

from __future__ import annotations

import bisect
from collections import Counter, OrderedDict

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_SEEN_BATCHES = 4096   # batch ids remembered to count each batch once


class Histogram:
    def __init__(self, buckets) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, running = [], 0
        sep = "," if labels else ""
        for bound, count in zip((*self.buckets, "+Inf"), self.counts, strict=True):
            running += count
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound}"}} {running}')
        tag = f"{{{labels}}}" if labels else ""
        return [*out, f"{name}_sum{tag} {self.total:.6f}", f"{name}_count{tag} {self.n}"]


class Metrics:
    def __init__(self) -> None:
        self.requests: Counter = Counter()          # (endpoint, status) -> count
        self.latency: dict[str, Histogram] = {}
        self.batch_sizes = Histogram(BATCH_BUCKETS)
        self.model_seconds = Histogram(LATENCY_BUCKETS_S)
        self.crops = 0
        self.faces = 0
        self.in_flight = 0
        self._seen: OrderedDict[str, None] = OrderedDict()

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests[(endpoint, status)] += 1
        self.latency.setdefault(endpoint, Histogram(LATENCY_BUCKETS_S)).observe(seconds)

    def batches(self, infos: list[dict]) -> None:
        """EmoNet calls that answered a request; a call seen before (it answered another request) is not
        counted again."""
        for info in infos:
            if info["batch_id"] in self._seen:
                continue
            self._seen[info["batch_id"]] = None
            if len(self._seen) > _SEEN_BATCHES:
                self._seen.popitem(last=False)
            self.batch_sizes.observe(info["size"])
            self.model_seconds.observe(info["model_s"])

    def text(self) -> str:
        lines = ["# HELP emoengine_requests_total HTTP requests answered, by endpoint and status.",
                 "# TYPE emoengine_requests_total counter"]
        lines += [f'emoengine_requests_total{{endpoint="{e}",status="{s}"}} {n}'
                  for (e, s), n in sorted(self.requests.items())]
        lines += ["# HELP emoengine_request_seconds Request latency in the gateway, by endpoint.",
                  "# TYPE emoengine_request_seconds histogram"]
        for endpoint, hist in sorted(self.latency.items()):
            lines += hist.lines("emoengine_request_seconds", f'endpoint="{endpoint}"')
        lines += ["# HELP emoengine_batch_size Crops per EmoNet call formed by the dynamic batcher.",
                  "# TYPE emoengine_batch_size histogram", *self.batch_sizes.lines("emoengine_batch_size"),
                  "# HELP emoengine_model_seconds Seconds each of those EmoNet calls took in its replica.",
                  "# TYPE emoengine_model_seconds histogram", *self.model_seconds.lines("emoengine_model_seconds"),
                  "# HELP emoengine_crops_total Crops sent to EmoNet through /v1/crops.",
                  "# TYPE emoengine_crops_total counter", f"emoengine_crops_total {self.crops}",
                  "# HELP emoengine_faces_total Faces found and answered through /v1/faces.",
                  "# TYPE emoengine_faces_total counter", f"emoengine_faces_total {self.faces}",
                  "# HELP emoengine_queue_depth Requests in the gateway now (received, not yet answered).",
                  "# TYPE emoengine_queue_depth gauge", f"emoengine_queue_depth {self.in_flight}"]
        return "\n".join(lines) + "\n"


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (what the client and tests read back)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out
