"""TritonClient against a local HTTP stand-in speaking Triton's v2 protocol: what one failed request does to the
others in flight."""

from __future__ import annotations

import asyncio
import contextlib
import json

import numpy as np
import pytest
from aiohttp import web

from mediafm.triton_client import TritonClient


@contextlib.asynccontextmanager
async def stand_in(infer, route: str = "/v2/models/m/infer"):
    """A local HTTP server answering Triton's infer route with `infer`; yields its host:port."""
    app = web.Application()
    app.router.add_post(route, infer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    finally:
        await runner.cleanup()



def test_a_request_whose_connection_drops_is_sent_again_alone_and_the_others_in_flight_finish_once():
    """Request 0's connection drops while requests 1-3 are in flight on the same client. Before (2026-12-07), the
    failure closed the session they all shared: 1-3 were aborted and sent again, and as Triton's HTTP endpoint
    does not cancel what a client leaves, their work was done twice (under a backlog of timeouts, a backlog that
    grew on itself). Now only request 0 is sent again: 5 calls for 4 answers. The stand-in orders the calls with
    events, not times: 0 drops once 1-3 are in, and 1-3 answer once 0 is back."""
    calls: list[int] = []
    others_in, retry_in = asyncio.Event(), asyncio.Event()

    async def infer(request: web.Request) -> web.StreamResponse:
        raw = await request.read()  # a JSON header, the tensors' bytes after it (binary_data)
        n = int(request.headers.get("Inference-Header-Content-Length", len(raw)))
        inp = json.loads(raw[:n])["inputs"][0]
        k = int(inp["data"][0]) if "data" in inp else int(np.frombuffer(raw[n:n + 4], np.float32)[0])
        calls.append(k)
        if sorted(set(calls) - {0}) == [1, 2, 3]:
            others_in.set()
        if k == 0 and calls.count(0) == 1:
            await others_in.wait()
            request.transport.close()  # the connection drops mid-request
            return web.Response(status=500)
        if k == 0:
            retry_in.set()
        else:
            await retry_in.wait()
        return web.json_response({"model_name": "m", "model_version": "1", "outputs": [
            {"name": "Y", "datatype": "FP32", "shape": [1, 1], "data": [float(k)]}]})

    async def main():
        async with stand_in(infer) as url:
            client = TritonClient(url, backoff_s=(0.05, 0.1), give_up_after_s=60)
            try:
                got = await asyncio.wait_for(asyncio.gather(*(
                    client.infer("m", {"X": np.full((1, 1), k, np.float32)}, ["Y"]) for k in range(4))), timeout=60)
            finally:
                await client.close()
        return [float(g["Y"][0, 0]) for g in got]

    assert asyncio.run(main()) == [0.0, 1.0, 2.0, 3.0]
    assert sorted(calls) == [0, 0, 1, 2, 3], calls


def test_the_workers_triton_timeout_is_a_setting_and_a_request_past_it_is_sent_again(tmp_path):
    """triton_timeout_s reaches the client a worker builds (before 2026-12-08 it was fixed at 600 s): a request
    Triton holds past it is abandoned and sent again, a transient fault, not an error. The stand-in holds the first
    call until the second one arrives, which only the client's timeout sends."""
    from mediafm.config import Settings
    from streams.app import create_runtime

    calls: list[float] = []
    second = asyncio.Event()

    async def infer(request: web.Request) -> web.StreamResponse:
        await request.read()
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 1:
            await second.wait()
        else:
            second.set()
        return web.json_response({"model_name": "m", "model_version": "1", "outputs": [
            {"name": "Y", "datatype": "FP32", "shape": [1, 1], "data": [7.0]}]})

    async def main():
        async with stand_in(infer) as url:
            rt = create_runtime(Settings(state_dir=tmp_path, topic_prefix="tmo", worker_web_port=16074,
                                         triton_url=url, triton_timeout_s=0.5))
            client = rt.triton
            client.backoff_s = (0.05, 0.1)
            try:
                got = await asyncio.wait_for(client.infer("m", {"X": np.zeros((1, 1), np.float32)}, ["Y"]),
                                             timeout=30)
            finally:
                await client.close()
        return float(got["Y"][0, 0])

    assert asyncio.run(main()) == 7.0
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.45, calls


@pytest.mark.parametrize("bad, match", [(0.0, "must be > 0"), (-1.0, "must be > 0"), (float("inf"), "must be a finite number")])
def test_a_triton_timeout_that_is_no_time_is_refused(bad, match):
    from mediafm.config import Settings
    from mediafm.errors import ConfigError

    with pytest.raises(ConfigError, match=f"triton_timeout_s={bad} {match}"):
        Settings(triton_timeout_s=bad)


def test_a_proxys_4xx_is_retried_and_only_tritons_400_is_the_inputs():
    """Triton behind a proxy: nginx answers 413 to a body over its limit (1 MB by default, less than one MediaFM
    window) until its limit is raised. Before 2026-12-08 every 4xx but 408 and 429 was BadRequest, and every title
    was dead-lettered as the input's fault; now only Triton's 400 (INVALID_ARG) is, and the rest is waited out."""
    from mediafm.errors import BadRequest

    answers = [web.Response(status=413, text="<html>413 Request Entity Too Large</html>"),
               web.Response(status=403, text="Forbidden"), web.Response(status=404, text="Not Found")]
    calls: list[int] = []

    async def infer(request: web.Request) -> web.StreamResponse:
        await request.read()
        calls.append(1)
        if request.match_info["model"] == "bad":
            return web.json_response({"error": "unexpected shape for input 'X'"}, status=400)
        if answers:
            return answers.pop(0)
        return web.json_response({"model_name": "m", "model_version": "1", "outputs": [
            {"name": "Y", "datatype": "FP32", "shape": [1, 1], "data": [5.0]}]})

    async def main():
        async with stand_in(infer, "/v2/models/{model}/infer") as url:
            client = TritonClient(url, backoff_s=(0.01, 0.02), give_up_after_s=30)
            try:
                got = await client.infer("m", {"X": np.zeros((1, 1), np.float32)}, ["Y"])
                n = len(calls)
                with pytest.raises(BadRequest, match="unexpected shape"):
                    await client.infer("bad", {"X": np.zeros((1, 1), np.float32)}, ["Y"])
                return float(got["Y"][0, 0]), n, len(calls) - n
            finally:
                await client.close()

    assert asyncio.run(main()) == (5.0, 4, 1), "413, 403, 404 waited out, then the answer; a 400 at once"
