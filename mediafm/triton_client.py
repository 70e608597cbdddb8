"""The Triton client: calling the served models, with the retry policy every caller shares.

Two kinds of failure, two answers:

- the request is bad (Triton answers 400, INVALID_ARG: wrong shape, no modality): raise
  :class:`BadRequest` at once, so the caller can dead-letter that input;
- anything else is retried: another 4xx is of a proxy in front of Triton (401, 403, 413) or of a model not
  loaded (404), and Triton may be unreachable or overloaded (connection refused, 5xx, model not
  ready, unloaded or not yet exported; a served encoder out of memory answers
  503, mediafm/media/served_encoders.py): wait and retry with capped exponential
  backoff, for as long as the
  caller allows (`give_up_after_s`, default forever): nothing is dropped.
  Every retry counts in `mediafm_retries_total{service="triton"}` (mediafm/retry_metrics.py).

While nothing listens at Triton's address (a restart, a crash) a try costs the server nothing, so the wait
before each such retry is capped at `absent_s` (1 s; 0.5-1.5 s with the jitter): a Triton that comes back is
used within about a second of listening, not after a backoff that grew through its outage (with the 10-s cap
and its jitter, up to 15 s more, which live shots wait on). A server that answers and fails (5xx, a timeout,
a dropped connection) is busy or broken: its backoff grows to the full cap, so a crowd of workers does not
hammer it. Past the first 5 tries of a request, its warning is logged once every 30 s.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import aiohttp
import numpy as np
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException

from mediafm.errors import BadRequest, TritonUnavailable, VersionRetired
from mediafm.retry_metrics import count_retry

log = logging.getLogger(__name__)

_DTYPES = {np.dtype(np.float32): "FP32", np.dtype(np.bool_): "BOOL", np.dtype(np.int64): "INT64",
           np.dtype(np.int32): "INT32", np.dtype(np.uint8): "UINT8", np.dtype(object): "BYTES"}


def _inputs(mod, tensors: dict[str, np.ndarray]) -> list:
    out = []
    for name, x in tensors.items():
        x = np.ascontiguousarray(x)
        i = mod.InferInput(name, list(x.shape), _DTYPES[x.dtype])
        i.set_data_from_numpy(x)
        out.append(i)
    return out


def _model_missing(e: InferenceServerException) -> bool:
    """The model is not served right now (unloaded, loading, no version yet): wait, do not reject."""
    text = str(e).lower()  # Triton's own words, and a proxy's "Not Found"
    return any(s in text for s in ("not found", "not ready", "unknown model", "no available versions"))


def _is_bad_request(e: InferenceServerException) -> bool:
    """What the input caused: Triton says so with 400 (INVALID_ARG) alone. Any other 4xx is of what stands between
    (a proxy's 401, 403 or 413: nginx's default 1 MB body is less than one MediaFM window) or of the server (404:
    the model not loaded yet), and the same input goes through once that is mended: retried, never dead-lettered.
    Before 2026-12-08 every 4xx but 408 and 429 was the input's, and a proxy in front of Triton dead-lettered
    every title."""
    return str(e.status() or "") == "400"


class TritonClient:
    """Async client with backoff. One per worker; call `close()` at shutdown."""

    PLAIN_RESPONSE = {"Accept-Encoding": "identity"}
    """aiohttp asks for gzip by default and Triton obliges: every response (MediaFM's windows are MBs of
    float32) was compressed by the server and decompressed here, on the same CPUs, for a loopback hop."""

    def __init__(self, url: str, *, give_up_after_s: float | None = None,
                 backoff_s: tuple[float, float] = (0.2, 10.0), absent_s: float = 1.0, on_latency=None,
                 request_timeout_s: float = 600.0) -> None:
        self.url = url
        self.request_timeout_s = request_timeout_s
        """A request's whole time, its wait in Triton's queue included: tritonclient's own 60 s was passed by a
        backlog of encoder batches on CPUs, and each request timed out was sent again (Triton's HTTP endpoint
        does not cancel what its client left), so a backlog grew on itself."""
        self.give_up_after_s = give_up_after_s
        self.backoff_s = backoff_s
        self.absent_s = absent_s  # the longest wait while nothing listens at `url` (the module's docstring)
        self.on_latency = on_latency  # callable(model, seconds), e.g. a Prometheus histogram
        self._client: aiohttpclient.InferenceServerClient | None = None

    async def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str],
                    *, version: str = "", meta: dict | None = None) -> dict[str, np.ndarray]:
        """Outputs by name. `meta`, if given, receives the answering model_version."""
        async def call(client):
            t0 = time.monotonic()
            try:
                res = await client.infer(model, _inputs(aiohttpclient, inputs), model_version=version,
                                         outputs=[aiohttpclient.InferRequestedOutput(o) for o in outputs],
                                         headers=dict(self.PLAIN_RESPONSE))
            except InferenceServerException as e:
                if version and _model_missing(e):  # retired for good, or only not ready yet?
                    served = [str(v) for v in (await client.get_model_metadata(model)).get("versions", [])]
                    if served and version not in served:
                        raise VersionRetired(f"{model} version {version} is no longer served (now: "
                                             f"{', '.join(served)})") from None
                raise
            if self.on_latency is not None:
                self.on_latency(model, time.monotonic() - t0)
            if meta is not None:
                meta["model_version"] = str(res.get_response().get("model_version", ""))
            return {o: res.as_numpy(o) for o in outputs}

        return await self._retry(model, call)

    async def model_config(self, model: str) -> dict:
        """The served model's configuration as Triton reports it (max_batch_size, inputs, parameters)."""
        return await self._retry(model, lambda client: client.get_model_config(model))

    async def _retry(self, model: str, call):
        """`await call(client)` until it answers: BadRequest at once on a 4xx, else wait with backoff."""
        start = last_log = time.monotonic()
        delay = self.backoff_s[0]
        attempt = 0
        while True:
            attempt += 1
            absent = False  # nothing listens at the address: trying again costs the server nothing
            try:
                if self._client is None:
                    self._client = aiohttpclient.InferenceServerClient(self.url, conn_timeout=self.request_timeout_s)
                return await call(self._client)
            except InferenceServerException as e:
                if _is_bad_request(e) and not _model_missing(e):
                    raise BadRequest(f"{model}: {e.message()}") from None
                reason = f"{e.status()}: {e.message()}"
            except (TimeoutError, OSError, aiohttp.ClientError) as e:  # refused, reset, or the server died mid-request
                # The session stays: its connector drops a broken connection and opens another. Closing it here
                # (before 2026-12-07) aborted every other request in flight on it, each of them then sent again.
                reason = f"{type(e).__name__}: {e}"
                absent = isinstance(e, aiohttp.ClientConnectorError | ConnectionRefusedError)
            now = time.monotonic()
            if self.give_up_after_s is not None and now - start > self.give_up_after_s:
                raise TritonUnavailable(f"{model}: Triton at {self.url} unavailable for {now - start:.0f}s "
                                        f"({attempt} attempts); last error {reason}")
            wait = min(delay, self.absent_s) if absent else delay
            if attempt <= 5 or now - last_log >= 30:  # an outage of minutes at 1 s: a line each 30 s, not each try
                log.warning("triton %s unavailable for %.0fs (attempt %d, %s); retrying in %.1fs", model,
                            now - start, attempt, reason, wait)
                last_log = now
            count_retry("triton")  # mediafm_retries_total{service="triton"}
            await asyncio.sleep(wait * (0.5 + random.random()))  # jitter: workers don't retry in lockstep
            delay = min(delay * 2, self.backoff_s[1])

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


def infer_sync(url: str, model: str, inputs: dict[str, np.ndarray], outputs: list[str],
               *, version: str = "") -> dict[str, np.ndarray]:
    """One blocking call without retries, for CLI tools and checks."""
    client = httpclient.InferenceServerClient(url)
    try:
        res = client.infer(model, _inputs(httpclient, inputs), model_version=version,
                           outputs=[httpclient.InferRequestedOutput(o) for o in outputs])
    except InferenceServerException as e:
        if _is_bad_request(e):
            raise BadRequest(f"{model}: {e.message()}") from None
        raise TritonUnavailable(f"{model}: {e.message()}") from None
    finally:
        client.close()
    return {o: res.as_numpy(o) for o in outputs}
