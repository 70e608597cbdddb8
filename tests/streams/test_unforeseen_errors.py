"""An error no stage foresaw (a library bug, an unexpected type from a dependency) dead-letters the events the
stage held, with the reason, and the agent goes on with the next ones. Before, it crashed the agent: Faust
restarted it, but the batch it held was acknowledged and lost without a trace.

In-process (Faust's agent test context: no broker), with the stage's Triton calls replaced to fail once.
The stages run against the real broker and Triton in the other tests of this folder.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from conftest import until

from mediafm.config import Settings
from mediafm.errors import BadRequest
from mediafm.profiles import OFFLINE
from mediafm.schema import (
    EncodedShot,
    EncodedShots,
    FusedShot,
    FusedShots,
    ShotsRefused,
    record_shots,
    shot_records,
    vec_to_bytes,
)
from streams.app import create_runtime
from streams.fuse import BATCH

LAY = OFFLINE.layout


def encoded(i: int) -> bytes:
    return EncodedShot(title_id="t", shot_index=i, start_s=i, end_s=i + 1, profile=OFFLINE.name,
                       video=vec_to_bytes(np.ones(LAY.dims["video"], np.float32)), audio=None, text=None,
                       n_shots=4, published_at=1.0).to_bytes()


def fused_live(i: int) -> bytes:
    return FusedShot(title_id="ev", shot_index=i, start_s=i, end_s=i + 1, profile=OFFLINE.name,
                     fused=vec_to_bytes(np.ones(LAY.fused_dim, np.float32)), present=[True, False, False],
                     n_shots=None, kind="live", published_at=1.0).to_bytes()


@pytest.fixture
def rt(tmp_path):
    rt = create_runtime(Settings(state_dir=tmp_path, topic_prefix="unforeseen", worker_web_port=16071))
    rt.letters, rt.sent = [], []

    async def dead_letter(stage, event, reason):
        rt.letters.append((stage, event.message.value, reason))

    rt.dead_letter = dead_letter
    return rt


def test_fuse_dead_letters_a_batch_it_cannot_fuse_and_fuses_the_next(rt):
    asyncio.run(_fuse(rt))


async def _fuse(rt):
    calls = []

    async def infer(model, inputs, outputs, **kw):
        calls.append(len(inputs["VIDEO"]))
        if len(calls) == 1:
            raise RuntimeError("a library bug")
        return {"FUSED": np.zeros((len(inputs["VIDEO"]), LAY.fused_dim), np.float32)}

    refusals = []

    async def send(topic, key, value):
        assert topic is rt.topics.fused
        got = record_shots(FusedShots, value, refusals=True)
        if isinstance(got, ShotsRefused):  # in place of each record dead-lettered: its title is given up
            refusals.append((got.kind, got.first, got.last, got.n_shots, got.stage))
        else:
            rt.sent.extend(shot.shot_index for shot in got)

    rt.triton.infer, rt.send = infer, send
    agent = rt.app.agents["streams.fuse.fuse_shots"]
    async with agent.test_context() as ctx:
        for i in range(2):
            await ctx.put(key=b"t", value=encoded(i))
        await until(lambda: len(rt.letters) == 2, f"two dead letters, got {rt.letters}")
        for i in range(2, 4):  # the agent is still there
            await ctx.put(key=b"t", value=encoded(i))
        await until(lambda: rt.sent == [2, 3], f"shots 2 and 3 fused, got {rt.sent}")
    assert [(s, v) for s, v, _ in rt.letters] == [("fuse", encoded(0)), ("fuse", encoded(1))]
    assert all("fusing failed: RuntimeError: a library bug" in r for _, _, r in rt.letters), rt.letters
    assert "shot 0 of 't'" in rt.letters[0][2]
    assert sorted(refusals) == [("title", 0, 0, 4, "fuse"), ("title", 1, 1, 4, "fuse")]


def test_contextualise_dead_letters_a_live_shot_it_cannot_contextualise_and_goes_on(rt):
    asyncio.run(_contextualise(rt))


async def _contextualise(rt):
    seen = []

    async def contextualise(shots, windows_for, *, n_shots, version=""):
        seen.append(shots[-1].shot_index)
        if len(seen) == 1:
            raise TypeError("unexpected type from a dependency")
        return 1, "1"

    async def sends_acknowledged():
        return None

    rt.contextualise, rt.sends_acknowledged = contextualise, sends_acknowledged
    agent = rt.app.agents["streams.contextualise.contextualise"]
    async with agent.test_context() as ctx:
        await ctx.put(key=b"ev", value=fused_live(0))
        await until(lambda: len(rt.letters) == 1, f"one dead letter, got {rt.letters}")
        await ctx.put(key=b"ev", value=fused_live(0))  # the same shot again: it was not counted
        await until(lambda: seen == [0, 0], f"shot 0 contextualised again, got {seen}")
    stage, value, reason = rt.letters[0]
    assert (stage, value) == ("live", fused_live(0))
    assert reason == "live failed: TypeError: unexpected type from a dependency"


def test_fuse_fuses_records_of_many_shots_whole_in_calls_of_at_most_its_batch(rt):
    """Records of several shots (EncodedShots) are never split across Triton calls, no call is over BATCH, and a
    record holding a shot the fusion model refuses (a foreseen BadRequest) is dead-lettered whole, once, with the
    reason, while every other record's shots go on, in order."""
    asyncio.run(_fuse_records(rt))


async def _fuse_records(rt):
    per, n_records, bad = 50, 12, 137  # records of 50 shots; shot 137 (record 2) is refused by the model
    n = per * n_records

    def shot(i: int) -> bytes:
        return EncodedShot(title_id="t", shot_index=i, start_s=i, end_s=i + 1, profile=OFFLINE.name,
                           video=vec_to_bytes(np.full(LAY.dims["video"], i, np.float32)), audio=None, text=None,
                           n_shots=n, published_at=1.0).to_bytes()

    records = [EncodedShots(title_id="t", shots=[shot(i) for i in range(k, k + per)]).to_bytes()
               for k in range(0, n, per)]
    assert list(shot_records(EncodedShots, [shot(i) for i in range(per)], "t", "")) == records[:1]
    calls = []

    async def infer(model, inputs, outputs, **kw):
        firsts = inputs["VIDEO"][:, 0].astype(int).tolist()
        calls.append(firsts)
        if bad in firsts:
            raise BadRequest(f"shot {bad} refused")
        return {"FUSED": np.zeros((len(firsts), LAY.fused_dim), np.float32)}

    refusals = []

    async def send(topic, key, value):
        got = record_shots(FusedShots, value, refusals=True)
        if isinstance(got, ShotsRefused):
            refusals.append((got.first, got.last, got.n_shots))
        else:
            rt.sent.extend(s.shot_index for s in got)

    rt.triton.infer, rt.send = infer, send
    agent = rt.app.agents["streams.fuse.fuse_shots"]
    async with agent.test_context() as ctx:
        for r in records:
            await ctx.put(key=b"t", value=r)
        want = [i for i in range(n) if i // per != bad // per]
        await until(lambda: rt.sent == want, f"every shot but those of record 2, in order; got {len(rt.sent)}")
        await until(lambda: refusals, "a ShotsRefused in place of record 2")
    assert refusals == [(100, 149, n)], "record 2's shots, once"
    assert [(s, v) for s, v, _ in rt.letters] == [("fuse", records[bad // per])], "record 2, once"
    assert f"shot {bad} refused" in rt.letters[0][2]
    whole = [c for c in calls if len(c) > 1]  # before one call was taken apart to find the refused shot
    assert whole and all(len(c) <= BATCH for c in whole), [len(c) for c in whole]
    assert all(c[0] % per == 0 and len(c) % per == 0 for c in whole), "a record is never split across calls"


@pytest.mark.parametrize("agent_name, value", [
    ("streams.contextualise.contextualise", b"not a fused shot"),
    ("streams.segment.segment_live", b"not a live segment"),
    ("streams.segment.segment_titles", b"not a title request"),
])
def test_an_agent_that_fails_outside_its_stages_checks_stops_the_worker(rt, worker_exits, agent_name, value):
    """The agents that iterate Runtime.batches or Runtime.events: a record the stage refuses, and then the dead
    letter itself fails (a failure outside the stage's checks). The worker stops (exit 75, so the record is
    fetched again). Before, the exception left the agent's body without reaching the generator's `unfinished`
    block (Python closes an async generator, later, with GeneratorExit; it does not throw the body's exception
    into it): Faust restarted the agent with no seek, and the record was neither processed nor fetched again."""
    try:
        asyncio.run(_dead_letter_fails(rt, agent_name, value, worker_exits))
    except (SystemExit, asyncio.CancelledError):  # the stand-in exit's SystemExit, out of the agent's task
        pass
    assert worker_exits == [75]


async def _dead_letter_fails(rt, agent_name, value, exits):
    tried = []

    async def dead_letter(stage, event, reason):
        tried.append(reason)
        raise RuntimeError("the dead-letter topic could not be written")

    rt.dead_letter = dead_letter
    agent = rt.app.agents[agent_name]
    async with agent.test_context() as ctx:
        await ctx.put(key=b"x", value=value)
        await until(lambda: bool(exits), "the worker stopped (exit 75)")
    assert len(tried) == 1, tried


def test_a_live_record_refused_at_the_fuse_stage_is_said_in_its_place_after_the_shots_before_it(rt):
    """The last shot of a live event (carrying n_shots) comes from an encoder with a NaN in its vector: the fuse
    stage refuses its record. Before, nothing told the live stage, and the event never ended. Now a ShotsRefused
    follows the shots fused before it, on the fused topic, naming the shot and n_shots."""
    asyncio.run(_fuse_refuses_a_live_record(rt))


async def _fuse_refuses_a_live_record(rt):
    from mediafm.schema import decode

    def live(i: int, value: float = 1.0) -> bytes:
        return EncodedShot(title_id="ev", shot_index=i, start_s=i, end_s=i + 1, profile=OFFLINE.name,
                           video=vec_to_bytes(np.full(LAY.dims["video"], value, np.float32)), audio=None, text=None,
                           n_shots=3 if i == 2 else None, kind="live", published_at=1.0).to_bytes()

    async def infer(model, inputs, outputs, **kw):
        return {"FUSED": np.ones((len(inputs["VIDEO"]), LAY.fused_dim), np.float32)}

    async def send(topic, key, value):
        assert topic is rt.topics.fused
        got = record_shots(FusedShots, value, refusals=True)
        rt.sent.append(got if isinstance(got, ShotsRefused) else [s.shot_index for s in got])

    rt.triton.infer, rt.send = infer, send
    agent = rt.app.agents["streams.fuse.fuse_shots"]
    async with agent.test_context() as ctx:
        for i in range(2):
            await ctx.put(key=b"ev", value=live(i))
        await ctx.put(key=b"ev", value=live(2, np.nan))
        await until(lambda: len(rt.sent) >= 2 and isinstance(rt.sent[-1], ShotsRefused), f"got {rt.sent}")
    assert [x for x in rt.sent if not isinstance(x, ShotsRefused)] in ([[0, 1]], [[0], [1]])
    refusal = rt.sent[-1]
    assert (refusal.title_id, refusal.first, refusal.last, refusal.n_shots, refusal.stage) == ("ev", 2, 2, 3, "fuse")
    assert "NaN" in refusal.reason and decode(refusal.to_bytes()) == refusal
    assert len(rt.letters) == 1 and rt.letters[0][0] == "fuse"


def test_a_live_shot_refused_at_the_live_stage_ends_its_event_where_it_carried_n_shots(rt):
    """The last shot of a live event reaches the live stage with a fused vector of the wrong width: refused there.
    Before, the event never ended and its shots never had a final (they wait for 16 shots of right context). Now
    the refused shot is counted lost in its place, and the event ends: shots 0 and 1 get their finals."""
    asyncio.run(_live_refuses_its_last_shot(rt))


async def _live_refuses_its_last_shot(rt):
    finals = []

    async def contextualise(shots, windows_for, *, n_shots, version=""):
        _, picks = windows_for(64, 32)
        finals.extend(i for i, _, final in picks if final)
        return len(picks), "1"

    async def sends_acknowledged():
        return None

    def shot(i: int, width: int, n: int | None) -> bytes:
        return FusedShot(title_id="ev", shot_index=i, start_s=i, end_s=i + 1, profile=OFFLINE.name,
                         fused=vec_to_bytes(np.ones(width, np.float32)), present=[True, False, False],
                         n_shots=n, kind="live", published_at=1.0).to_bytes()

    rt.contextualise, rt.sends_acknowledged = contextualise, sends_acknowledged
    agent = rt.app.agents["streams.contextualise.contextualise"]
    async with agent.test_context() as ctx:
        await ctx.put(key=b"ev", value=shot(0, LAY.fused_dim, None))
        await ctx.put(key=b"ev", value=shot(1, LAY.fused_dim, None))
        await ctx.put(key=b"ev", value=shot(2, 5, 3))  # the wrong width: refused by the live stage's check
        await until(lambda: sorted(finals) == [0, 1], f"finals of shots 0 and 1, got {finals}")
    assert len(rt.letters) == 1 and "fused has 20 bytes" in rt.letters[0][2], rt.letters


def test_the_contextualise_agent_gives_up_a_title_for_shots_refused_before_it_or_by_it(rt):
    """Through the agent: a title's ShotsRefused from an earlier stage reaches the titles, not the live stage, and
    a title's record the stage refuses itself (a fused vector of the wrong width) counts as refused there too.
    Either way, once every shot has arrived or been refused, one dead letter gives the publication up. Before, a
    title's refused shots were said in the dead letters only, and the title waited for them for ever."""
    asyncio.run(_give_up(rt))


async def _give_up(rt):
    def fused(tid: str, i: int, width: int = LAY.fused_dim) -> bytes:
        return FusedShot(title_id=tid, shot_index=i, start_s=i, end_s=i + 1, profile=OFFLINE.name,
                         fused=vec_to_bytes(np.ones(width, np.float32)), present=[True, False, False], n_shots=3,
                         request_id="r1", published_at=1.0).to_bytes()

    async def sends_acknowledged():
        return None

    rt.sends_acknowledged = sends_acknowledged
    agent = rt.app.agents["streams.contextualise.contextualise"]
    async with agent.test_context() as ctx:
        await ctx.put(key=b"a", value=ShotsRefused(title_id="a", first=0, last=2, stage="encode", reason="gone",
                                                   n_shots=3, kind="title", request_id="r1").to_bytes())
        for i, width in [(0, LAY.fused_dim), (1, LAY.fused_dim), (2, 5)]:
            await ctx.put(key=b"b", value=fused("b", i, width))
        await until(lambda: len(rt.letters) == 3, f"three dead letters, got {rt.letters}")
    reasons = [(stage, reason.split(":")[0]) for stage, _, reason in rt.letters]
    assert reasons == [("contextualise", "title 'a' (request 'r1', 3 shots) given up"),
                       ("contextualise", "fused has 20 bytes, expected 8704 (float32 x 2176)"),
                       ("contextualise", "title 'b' (request 'r1', 3 shots) given up")], rt.letters
    assert "shots 0-2 refused at the encode stage: gone" in rt.letters[0][2]
    assert "shot 2 refused at the contextualise stage: fused has 20 bytes" in rt.letters[2][2]
