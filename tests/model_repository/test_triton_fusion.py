"""The `fusion` model served by real Triton equals mediafm.fusion.fuse in-process."""

import asyncio
import re

import numpy as np
import pytest

from mediafm.errors import BadRequest
from mediafm.fusion import fuse
from mediafm.profiles import PRODUCTION
from mediafm.triton_client import TritonClient, infer_sync

pytestmark = pytest.mark.triton


def _batch(n, seed=0):
    rng = np.random.default_rng(seed)
    v, a, t = (rng.normal(size=(n, 768)).astype(np.float32) for _ in range(3))
    present = rng.random((n, 3)) > 0.3
    present[:, 0] = True
    return v, a, t, present


def test_triton_output_equals_in_process(triton_stack):
    v, a, t, p = _batch(37)
    out = infer_sync(triton_stack.triton_http_url, "fusion",
                     {"VIDEO": v, "AUDIO": a, "TEXT": t, "PRESENT": p}, ["FUSED"])["FUSED"]
    np.testing.assert_allclose(out, fuse(v, a, t, p, layout=PRODUCTION.layout), rtol=0, atol=1e-6)


def test_bad_request_gets_an_error_and_the_server_keeps_serving(triton_stack):
    v, a, t, p = _batch(2)
    with pytest.raises(BadRequest, match="match no encoder profile"):
        infer_sync(triton_stack.triton_http_url, "fusion",
                   {"VIDEO": v[:, :10], "AUDIO": a, "TEXT": t, "PRESENT": p}, ["FUSED"])
    out = infer_sync(triton_stack.triton_http_url, "fusion", {"VIDEO": v, "AUDIO": a, "TEXT": t, "PRESENT": p},
                     ["FUSED"])["FUSED"]
    assert out.shape == (2, 2304)


def test_concurrent_requests_each_get_their_own_answer(triton_stack):
    """Dynamic batching merges concurrent requests; answers must not get mixed up."""
    async def run():
        client = TritonClient(triton_stack.triton_http_url, give_up_after_s=30)
        batches = [_batch(1 + i % 5, seed=i) for i in range(24)]
        outs = await asyncio.gather(*(client.infer("fusion", {"VIDEO": v, "AUDIO": a, "TEXT": t, "PRESENT": p},
                                                   ["FUSED"]) for v, a, t, p in batches))
        await client.close()
        return batches, outs

    batches, outs = asyncio.run(run())
    for (v, a, t, p), out in zip(batches, outs, strict=True):
        np.testing.assert_allclose(out["FUSED"], fuse(v, a, t, p, layout=PRODUCTION.layout), atol=1e-6)


def test_unreachable_triton_is_retried_then_reported():
    from mediafm.errors import TritonUnavailable

    async def run():
        client = TritonClient("127.0.0.1:1", give_up_after_s=1.0, backoff_s=(0.05, 0.2))
        try:
            v, a, t, p = _batch(1)
            await client.infer("fusion", {"VIDEO": v, "AUDIO": a, "TEXT": t, "PRESENT": p}, ["FUSED"])
        finally:
            await client.close()

    with pytest.raises(TritonUnavailable, match=r"unavailable for \d+s \(\d+ attempts\)"):
        asyncio.run(run())


def _retry_waits(url: str, caplog, give_up_after_s: float) -> list[float]:
    """The waits a TritonClient logs before each retry of one request to `url`, until it gives up."""
    from mediafm.errors import TritonUnavailable

    async def run():
        client = TritonClient(url, give_up_after_s=give_up_after_s, backoff_s=(0.2, 10.0), absent_s=0.5)
        try:
            v, a, t, p = _batch(1)
            await client.infer("fusion", {"VIDEO": v, "AUDIO": a, "TEXT": t, "PRESENT": p}, ["FUSED"])
        finally:
            await client.close()

    with caplog.at_level("WARNING", logger="mediafm.triton_client"), pytest.raises(TritonUnavailable):
        asyncio.run(run())
    return [float(m) for m in re.findall(r"retrying in ([0-9.]+)s", caplog.text)]


def test_while_nothing_listens_retries_stay_absent_s_apart_and_a_failing_server_backs_off_further(caplog):
    """A restarting Triton (connection refused) is tried again every absent_s, so it is used about a second
    after it listens; one that answers 503 sees the backoff grow past that, to the cap."""
    import http.server
    import threading

    from mediafm.config import free_ports

    (port,) = free_ports(1)  # nothing listens there: every connection is refused
    refused = _retry_waits(f"127.0.0.1:{port}", caplog, give_up_after_s=3.0)
    assert refused[:3] == [0.2, 0.4, 0.5] and len(refused) >= 5 and max(refused) == 0.5, refused

    class Busy(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers["Content-Length"]))
            body = b'{"error": "overloaded"}'
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    caplog.clear()
    try:
        busy = _retry_waits(f"127.0.0.1:{srv.server_address[1]}", caplog, give_up_after_s=3.0)
    finally:
        srv.shutdown()
        srv.server_close()
    assert busy[:3] == [0.2, 0.4, 0.8], busy  # doubling past absent_s: 503 is a server that answers
    assert "503: overloaded" in caplog.text


def test_a_server_dying_mid_request_is_waited_out_not_raised():
    """Triton killed while a request is in flight: the connection drops with no answer
    (aiohttp's ServerDisconnectedError, not an OSError). It is retried like a refused connection."""
    import socket
    import threading

    from mediafm.errors import TritonUnavailable

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    accepted = []

    def hang_up():  # read the request, close without a response, every time
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.recv(65536)
            accepted.append(1)
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()

    async def run():
        client = TritonClient(f"127.0.0.1:{srv.getsockname()[1]}", give_up_after_s=1.0, backoff_s=(0.05, 0.2))
        try:
            v, a, t, p = _batch(1)
            await client.infer("fusion", {"VIDEO": v, "AUDIO": a, "TEXT": t, "PRESENT": p}, ["FUSED"])
        finally:
            await client.close()

    try:
        with pytest.raises(TritonUnavailable, match="Server disconnected"):
            asyncio.run(run())
    finally:
        srv.close()
    assert len(accepted) > 1, "retried"


def test_responses_come_uncompressed(triton_stack):
    # aiohttp asks for gzip by default and Triton obliges: MediaFM's responses (MBs of float32) were
    # compressed by the server and decompressed by the worker, on the same CPUs, for a loopback hop.
    # Watched on the wire: an aiohttp trace on the session tritonclient sends with (a private attribute).
    import aiohttp
    from tritonclient.http import aio

    seen = []

    async def on_end(session, ctx, params):
        seen.append((params.url.path, params.response.headers.get("Content-Encoding")))

    async def run():
        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(on_end)
        client = TritonClient(triton_stack.triton_http_url)
        client._client = aio.InferenceServerClient(triton_stack.triton_http_url)
        await client._client._stub.close()
        client._client._stub = aiohttp.ClientSession(auto_decompress=False, trace_configs=[trace])
        try:
            v, a, t, p = _batch(64)
            out = await client.infer("fusion", {"VIDEO": v, "AUDIO": a, "TEXT": t, "PRESENT": p}, ["FUSED"])
        finally:
            await client.close()
        np.testing.assert_allclose(out["FUSED"], fuse(v, a, t, p, layout=PRODUCTION.layout), rtol=0, atol=1e-6)

    asyncio.run(run())
    assert seen == [("/v2/models/fusion/infer", None)], seen
