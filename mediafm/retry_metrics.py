"""One Prometheus counter for every retry of a call to a service (Triton, the embeddings API).

A leaf module (imports only prometheus_client) so the Triton client, the encoders and
Triton's own python-backend processes may import it without pulling in the streams.
The worker's `/metrics` page serves the default registry, so the counter shows there:

    mediafm_retries_total{service="triton"}   a Triton call failed transiently and is retried
    mediafm_retries_total{service="openai"}   an embeddings API call failed transiently and is retried
"""

from __future__ import annotations

from prometheus_client import Counter

retries = Counter("mediafm_retries_total", "Calls to a service retried after a transient failure (5xx, 429, "
                  "timeouts, connection refused, out of memory, model not ready)", ["service"])


def count_retry(service: str) -> None:
    retries.labels(service).inc()


def retry_count(service: str) -> float:
    """The counter's value for `service` in this process (tests, logs)."""
    return retries.labels(service)._value.get()
