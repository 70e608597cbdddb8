"""Runtime.run_windows' bookkeeping: which row of which answer each shot gets, across requests and versions.

The real path (Triton, the served model, the window plan) is tests/streams/test_title_lengths.py. What it
cannot make happen on demand is a new model version answering between two requests of one title, so here
Triton is a stand-in that answers each window with a vector that names the window, the shot and the version.
"""

import asyncio

import numpy as np
import pytest

from mediafm.config import Settings
from mediafm.errors import SchemaError
from mediafm.profiles import get_profile
from mediafm.schema import FusedShot, vec_to_bytes
from mediafm.windows import Window
from streams.app import create_runtime

WIDTH = 4


class Triton:
    """Answers OUTPUT[b, t] = (request number, window index, shot t, version), padded to `widths[version]`."""

    def __init__(self, batch: int, versions: list[str], widths: dict[str, int] | None = None) -> None:
        self.batch, self.versions, self.widths, self.requests = batch, versions, widths or {}, 0

    async def model_config(self, model):
        return {"max_batch_size": self.batch, "parameters": {"max_shots": {"string_value": "64"}}}

    async def infer(self, model, inputs, outputs, *, meta=None, version=""):
        v = self.versions[min(self.requests, len(self.versions) - 1)]
        self.requests += 1
        B, T, _ = inputs["SHOTS"].shape
        out = np.zeros((B, T, self.widths.get(v, WIDTH)), np.float32)
        out[..., 0] = self.requests
        out[..., 1] = inputs["SHOTS"][:, :, 0]  # the window index, written into every shot below
        out[..., 2] = np.arange(T)
        out[..., 3] = float(v)
        meta["model_version"] = v
        return {"OUTPUT": out}


def run(rt, windows, rows):
    fused = np.zeros((max(w.end for w in windows), 8), np.float32)
    for k, w in enumerate(windows):
        fused[w.start : w.end, 0] = k  # overlapping windows: the shot's value is the last window's index
    return asyncio.run(rt.run_windows(fused, np.zeros(3, np.float32), windows, rows, "offline"))


@pytest.fixture
def rt(tmp_path):
    return create_runtime(Settings(state_dir=tmp_path, topic_prefix="rw"))


def test_each_row_comes_from_its_window_in_the_order_asked(rt):
    windows = [Window(10 * k, 10 * k + 10) for k in range(7)]  # disjoint: fused[:, 0] names the window
    rng = np.random.default_rng(0)
    rows = [(int(k), int(t)) for k, t in zip(rng.integers(0, 7, 40), rng.integers(0, 10, 40), strict=True)]
    rows += rows[:5]  # a shot asked for twice (live: provisional and final from one window)
    rt.triton = Triton(batch=3, versions=["1"])
    out, version = run(rt, windows, rows)
    assert version == "1" and rt.triton.requests == 3  # 7 windows, 3 a request
    assert out.shape == (len(rows), WIDTH)
    for (k, t), row in zip(rows, out, strict=True):
        assert row[1] == k and row[2] == t, (k, t, row)
        assert row[0] == k // 3 + 1, "the row of the request that carried its window"


def test_a_version_loaded_mid_title_runs_the_title_again_on_it(rt):
    windows = [Window(10 * k, 10 * k + 10) for k in range(6)]
    rows = [(k, t) for k in range(6) for t in range(10)]
    rt.triton = Triton(batch=2, versions=["1", "2"])  # the second request meets version 2
    out, version = run(rt, windows, rows)
    assert version == "2"
    assert (out[:, 3] == 2).all(), "every row from the version the title was finished with"
    assert rt.triton.requests == 2 + 3  # stopped at the change, then the whole title again


def test_a_wider_version_mid_title_is_a_version_change_not_a_crash(rt):
    windows = [Window(10 * k, 10 * k + 10) for k in range(4)]
    rows = [(k, 3) for k in range(4)]
    rt.triton = Triton(batch=2, versions=["1", "2"], widths={"2": 6})
    out, version = run(rt, windows, rows)
    assert version == "2" and out.shape == (4, 6)


def test_rows_outside_their_window_are_refused_before_any_request(rt):
    windows = [Window(0, 10), Window(5, 12)]
    rt.triton = Triton(batch=2, versions=["1"])
    for rows in ([(1, 7)], [(0, -1)], [(2, 0)]):  # shot 7 of a 7-shot window; -1 would wrap round in numpy
        with pytest.raises(IndexError):
            run(rt, windows, rows)
    assert rt.triton.requests == 0


def test_contextualise_returns_only_once_its_embeddings_are_acknowledged(rt):
    """Callers record embeddings as made (a title's "done", a live event's final count) once contextualise
    returns: with the progress changelog and the embeddings led by different brokers, returning before the
    broker acknowledged the embeddings let a kill -9 leave shots counted as published that never were."""
    asyncio.run(_acknowledged(rt))


async def _acknowledged(rt):
    profile = get_profile("offline")
    rt.triton = Triton(batch=4, versions=["1"], widths={"1": profile.layout.fused_dim})  # OUTPUT: fused space
    n = 5
    shots = [FusedShot(title_id="t", shot_index=i, start_s=float(i), end_s=i + 1.0, profile=profile.name,
                       fused=vec_to_bytes(np.full(profile.layout.fused_dim, i, np.float32)),
                       present=[True, True, True], n_shots=n) for i in range(n)]
    acks: list[asyncio.Future] = []

    async def send(topic, key, value, **kw):  # the producer's future, resolved when the broker acknowledges it
        assert topic == rt.topics.embeddings.get_topic_name()
        acks.append(asyncio.get_running_loop().create_future())
        return acks[-1]

    rt.app.producer.send = send

    def windows_for(size, stride):
        return [Window(0, n)], [(i, 0, True) for i in range(n)]

    task = asyncio.create_task(rt.contextualise(shots, windows_for, n_shots=n))
    for _ in range(1000):
        if len(acks) == n:
            break
        await asyncio.sleep(0)
    assert len(acks) == n, "one embedding sent per shot"
    for ack in acks:
        for _ in range(20):  # the loop runs everything that is ready
            await asyncio.sleep(0)
        assert not task.done(), "returned with embeddings not yet acknowledged"
        ack.set_result(None)
    assert await asyncio.wait_for(task, 5) == (n, "1")


def test_a_title_whose_shots_name_two_profiles_is_refused_with_what_differs(rt):
    """Runtime.contextualise reads a title's fused vectors as one block of its first shot's width (each was
    checked against its own profile on arrival): a shot of another width must be named, not misread."""
    offline, production = get_profile("offline"), get_profile("production")
    shots = [FusedShot(title_id="t", shot_index=i, start_s=float(i), end_s=i + 1.0, profile=p.name,
                       fused=vec_to_bytes(np.ones(p.layout.fused_dim, np.float32)), present=[True, True, True],
                       n_shots=3) for i, p in enumerate([offline, offline, production])]
    with pytest.raises(SchemaError, match="shot 2 of 't' has .* bytes of fused vector, .* in profile 'offline' of its "
                                          "shot 0: one title, one profile"):
        asyncio.run(rt.contextualise(shots, lambda size, stride: ([Window(0, 3)], [(0, 0, True)]), n_shots=3))
