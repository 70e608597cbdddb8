"""The OpenAI embeddings path through an outage: retried for as long as it takes, never dead-lettered.

A real local OpenAI-compatible HTTP server (stdlib) stands in for the API. It is down (connection
refused) for the first half of the outage window, then answers 503, 500, 502 and 429 until the
window ends, then embeds. The title embedding is asked for the way the worker's encode stage asks
(mediafm.media.embed.encode_title, production profile, default retry policy): it must complete, with
nothing raised, and the retries must show in mediafm_retries_total{service="openai"}.

The window is MEDIAFM_TEST_OPENAI_OUTAGE_S seconds (default 30, as a real outage might last; it only
costs wall time: the client sleeps while it waits).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from mediafm.config import free_ports
from mediafm.errors import BadInput, EncoderError, EncoderUnavailable, Transient
from mediafm.media.encoders import OpenAIText
from mediafm.retry_metrics import retry_count
from tests.mediafm.media.tiny_checkpoints import embeddings_json, send_json

OUTAGE_S = float(os.environ.get("MEDIAFM_TEST_OPENAI_OUTAGE_S", "30"))


class _Api(BaseHTTPRequestHandler):
    """/v1/embeddings: `script` (a list of statuses or "hang") is answered first, then until `down_until` the
    statuses in `cycle` in turn, then real vectors."""

    script: list = []
    cycle: list = []
    down_until = 0.0
    calls: list = []
    hang_s = 3.0

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        cls.calls.append((time.monotonic(), body))
        status = cls.script.pop(0) if cls.script else None
        if status is None and time.monotonic() < cls.down_until and cls.cycle:
            status = cls.cycle[len(cls.calls) % len(cls.cycle)]
        if status == "hang":
            time.sleep(cls.hang_s)
            status = 503
        if status is not None:
            msg = {400: "This model's maximum context length is 8192 tokens", 429: "rate limited"}.get(status, "down")
            if status == "echo":  # a server that sends the request's headers back in its error
                status, msg = 400, f"bad request; you sent Authorization: {self.headers.get('Authorization')}"
            send_json(self, status, json.dumps({"error": {"message": msg, "type": "test"}}).encode(),
                      {"Retry-After": "0"} if status == 429 else None)
        else:
            send_json(self, 200, embeddings_json(
                body, lambda t, dim: np.random.default_rng(len(t)).standard_normal(dim), default_dim=8))

    def log_message(self, *a):
        pass


class _Server:
    """The stand-in API on a fixed port; `start()` may come late (until then: connection refused)."""

    def __init__(self) -> None:
        (self.port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.srv: ThreadingHTTPServer | None = None
        _Api.script, _Api.cycle, _Api.calls, _Api.down_until = [], [], [], 0.0

    def start(self) -> None:
        self.srv = ThreadingHTTPServer(("127.0.0.1", self.port), _Api)
        self.srv.daemon_threads = True
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.srv is not None:
            self.srv.shutdown()
            self.srv.server_close()


@pytest.fixture
def api():
    server = _Server()
    yield server
    server.stop()


def test_embeddings_api_down_then_up_completes(api, monkeypatch):
    """Down (refused) for half the window, then 5xx / 429 until it ends, then up: the encode call completes."""
    from mediafm.config import Settings
    from mediafm.media import embed
    from mediafm.schema import TitleMeta
    from mediafm.triton_client import TritonClient

    monkeypatch.setenv("OUTAGE_TEST_KEY", "sk-test")
    monkeypatch.setattr(embed, "_OPENAI", {})  # a fresh client for this server
    settings = Settings(encoder_profile="production", openai_base_url=api.url, openai_api_key_env="OUTAGE_TEST_KEY")
    t0 = time.monotonic()
    _Api.down_until = t0 + OUTAGE_S
    _Api.cycle = [503, 500, 502, 429]
    timer = threading.Timer(OUTAGE_S / 2, api.start)
    timer.start()
    before = retry_count("openai")

    async def run():
        client = TritonClient("127.0.0.1:9")  # unused: the production text encoder is the API
        try:
            return await embed.encode_title(client, TitleMeta("t1", title="Station", synopsis="A train."),
                                            "production", settings=settings)
        finally:
            await client.close()

    try:
        vec = asyncio.run(run())
    finally:
        timer.cancel()
    took = time.monotonic() - t0
    assert vec.shape == (768,) and np.isclose(np.linalg.norm(vec), 1, atol=1e-5)
    assert took >= OUTAGE_S, "answered before the API was up?"
    assert took < OUTAGE_S + 25, f"{took:.1f}s: the backoff is capped, the retry after the outage comes soon"
    answered = [t for t, _ in _Api.calls]
    assert answered and min(answered) >= t0 + OUTAGE_S / 2 - 0.5, "nothing is answered while the port is closed"
    assert len(_Api.calls) >= 2, "the server saw 5xx/429 answers before the good one"
    assert retry_count("openai") - before >= 3


def test_timeouts_are_retried_bad_input_is_not_and_patience_ends_in_a_transient(api, monkeypatch):
    monkeypatch.setenv("OUTAGE_TEST_KEY", "sk-test")
    api.start()
    enc = OpenAIText(base_url=api.url, api_key_env="OUTAGE_TEST_KEY", timeout_s=0.5, backoff_s=(0.05, 0.2))

    # a request that hangs past the client's timeout, twice, then answers: retried, completed
    _Api.script, _Api.hang_s = ["hang", "hang"], 1.5
    before = retry_count("openai")
    out = enc.encode(["hello", "world"])
    assert out.shape == (2, 768) and retry_count("openai") - before == 2

    # 400 (the input's fault): EncoderError (BadInput, dead-lettered) at once, no retry
    _Api.script, _Api.calls = [400], []
    before = retry_count("openai")
    with pytest.raises(EncoderError, match="refused the input .*HTTP 400.*maximum context length") as err:
        enc.encode(["x" * 100_000])
    assert isinstance(err.value, BadInput) and len(_Api.calls) == 1 and retry_count("openai") == before

    # a caller that bounds its patience gets a Transient, never a BadInput
    bounded = OpenAIText(base_url=api.url, api_key_env="OUTAGE_TEST_KEY", timeout_s=0.5, backoff_s=(0.05, 0.1),
                         give_up_after_s=0.5)
    _Api.cycle, _Api.down_until = [503], time.monotonic() + 60
    with pytest.raises(EncoderUnavailable, match="unavailable for .*HTTP 503") as err:
        bounded.encode(["hello"])
    assert isinstance(err.value, Transient) and not isinstance(err.value, BadInput)
    # 401 is the key's fault, not the input's: retried too (and the reason names the fix)
    _Api.script, _Api.cycle, _Api.down_until = [401], [], 0.0
    assert enc.encode(["hello"]).shape == (1, 768)


def test_no_key_or_url_password_in_what_the_encoder_says(api, monkeypatch):
    """The key is never a setting, but a server may send it back (one that echoes the request's headers in its
    error did), and a base URL may hold a password: neither reaches an error, and so a dead letter or a log."""
    monkeypatch.setenv("OUTAGE_TEST_KEY", "sk-very-secret-key")
    api.start()
    enc = OpenAIText(base_url=api.url, api_key_env="OUTAGE_TEST_KEY", timeout_s=2, backoff_s=(0.05, 0.1))
    _Api.script = ["echo"]
    with pytest.raises(EncoderError, match=r"Authorization: Bearer \*\*\*") as err:
        enc.encode(["hello"])
    assert "sk-very-secret-key" not in str(err.value)
    with_password = OpenAIText(base_url=api.url.replace("http://", "http://me:url-password@"),
                               api_key_env="OUTAGE_TEST_KEY")
    assert "url-password" not in with_password.name and "me:***@127.0.0.1" in with_password.name
