"""A read the media's storage fails (too many open files, an I/O error, a stale network mount) is a fault of the
machine, not of the file: MediaUnavailable, a Transient the stages wait out and retry, never dead-letter. Before
2026-12-08 every such OSError was a MediaURIError ("check the path and its permissions"), a BadInput: a mount's
hiccup dead-lettered each title read during it, and a live event lost the segment and got a false cut.

The faults are real errno values from the real read path (os.open, which every reader of media goes through); the
title stage runs in-process (Faust's agent test context), its producer replaced by one that records what is sent.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys

import pytest
from conftest import until

from mediafm.config import Settings
from mediafm.errors import BadInput, MediaUnavailable, MediaURIError, Transient
from mediafm.media import decode
from mediafm.media.synthfilm import make_film
from mediafm.retry_metrics import retry_count
from mediafm.schema import ShotRef, TitleRequest
from mediafm.schema import decode as decode_msg


def _failing_open(monkeypatch, path, code: int, times: int) -> list[int]:
    """os.open fails with `code` on `path` the first `times` calls; the calls on it are counted."""
    real, calls = os.open, []

    def fake(p, flags, *a, **kw):
        if os.fspath(p) == os.fspath(path):
            calls.append(1)
            if len(calls) <= times:
                raise OSError(code, os.strerror(code), os.fspath(p))
        return real(p, flags, *a, **kw)

    monkeypatch.setattr(decode.os, "open", fake)
    return calls


@pytest.fixture(scope="module")
def film(tmp_path_factory):
    root = tmp_path_factory.mktemp("state")
    (root / "media").mkdir()
    make_film(root / "media" / "film.mp4", shots=[24, 24, 24])
    return root


@pytest.mark.parametrize("code", [errno.EIO, errno.ESTALE, errno.EMFILE, errno.ETIMEDOUT])
def test_a_read_the_storage_fails_is_transient(film, monkeypatch, code):
    path = (film / "media" / "film.mp4").resolve()
    _failing_open(monkeypatch, path, code, times=1)
    with pytest.raises(MediaUnavailable, match=os.strerror(code)) as err:
        decode.open_media(path)
    assert isinstance(err.value, Transient) and not isinstance(err.value, BadInput)
    decode.open_media(path).close()  # the storage answers again: the same file opens


@pytest.mark.parametrize("code", [errno.EACCES, errno.ENOENT, errno.ELOOP])
def test_what_the_file_or_its_path_causes_is_still_bad_input(film, monkeypatch, code):
    path = (film / "media" / "film.mp4").resolve()
    _failing_open(monkeypatch, path, code, times=1)
    with pytest.raises(MediaURIError):
        decode.open_media(path)


_NO_FDS = """
import resource, sys
from pathlib import Path
from mediafm.errors import MediaUnavailable
from mediafm.media.decode import open_media
path = Path(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
held = []
try:
    while True:
        held.append(open("/dev/null"))
except OSError:
    pass
try:
    open_media(path)
except MediaUnavailable as e:
    print("transient:", e)
"""


def test_a_process_out_of_file_descriptors_is_transient(film):
    """Really out of descriptors (RLIMIT_NOFILE reached, in a process of its own), not a patched os.open."""
    r = subprocess.run([sys.executable, "-c", _NO_FDS, str((film / "media" / "film.mp4").resolve())],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "transient:" in r.stdout and "Too many open files" in r.stdout, r.stdout


def _cut_title(film, until_, **settings) -> tuple[list[bytes], list[bytes]]:
    """The film published as a title to the title stage, run in-process (its producer records what is sent) until
    until_(sent, letters): (the records sent to the shots topic, the dead letters)."""
    from streams.app import create_runtime

    rt = create_runtime(Settings(state_dir=film, worker_web_port=16075, shot_detector="content", **settings))
    sent, letters = [], []

    async def send(topic, key, value, **kw):
        (letters if topic == rt.topics.deadletter.get_topic_name() else sent).append(value)
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    rt.app.producer.send = send
    path = (film / "media" / "film.mp4").resolve()

    async def main():
        agent = rt.app.agents["streams.segment.segment_titles"]
        async with agent.test_context() as ctx:
            await ctx.put(key=b"film", value=TitleRequest(title_id="film", uri=str(path), request_id="r1").to_bytes())
            await until(lambda: until_(sent, letters), f"the title's end: {len(sent)} shots, {len(letters)} letters",
                        timeout_s=120)

    asyncio.run(main())
    return sent, letters


def test_the_title_stage_waits_out_a_storage_fault_and_cuts_the_title(film, monkeypatch, worker_exits):
    calls = _failing_open(monkeypatch, (film / "media" / "film.mp4").resolve(), errno.EIO, times=2)
    before = retry_count("media")
    sent, letters = _cut_title(film, lambda sent, letters: len(sent) == 3 or letters, topic_prefix="storage")
    assert not letters, [decode_msg(x).reason for x in letters]
    refs = [decode_msg(x, expect=ShotRef) for x in sent]
    assert [r.shot_index for r in refs] == [0, 1, 2] and {r.n_shots for r in refs} == {3}
    assert retry_count("media") - before == 2 and len(calls) >= 3, "two failed reads waited out, then read"
    assert worker_exits == []


def test_what_ffmpeg_says_of_the_file_itself_is_not_taken_for_the_storage(film):
    """FFmpeg answers EBUSY to a y4m header of 100000x100000 pixels, and ENOMEM, EIO or EAGAIN to other files that
    fail the same way every time: such a file is dead-lettered, not retried for ever (the first version of
    storage_fault took any errno of STORAGE_ERRNOS, and the hostile-input test's title waited for good)."""
    import av

    for code in (errno.EBUSY, errno.ENOMEM, errno.EIO, errno.EAGAIN):
        assert decode.storage_fault("f", av.error.FFmpegError(code, os.strerror(code))) is None
        assert isinstance(decode.storage_fault("f", OSError(code, os.strerror(code))), MediaUnavailable)
    for code in (errno.EMFILE, errno.ESTALE, errno.ETIMEDOUT):
        assert isinstance(decode.storage_fault("f", av.error.FFmpegError(code, os.strerror(code))), MediaUnavailable)
    huge = film / "media" / "huge.y4m"
    huge.write_bytes(b"YUV4MPEG2 W100000 H100000 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(1024))
    with pytest.raises(BadInput):
        decode.probe(huge.resolve(), Settings(media_roots=(str(film / "media"),)))


def test_a_file_whose_storage_keeps_failing_is_dead_lettered_after_media_retry_s(film, monkeypatch, worker_exits):
    """A bad sector, or a FUSE mount turning the bucket's refusal into EIO, fails every read: waited out for ever
    it would hold the partition for good. Past media_retry_s the title is dead-lettered with the last error."""
    _failing_open(monkeypatch, (film / "media" / "film.mp4").resolve(), errno.EIO, times=10**6)
    sent, letters = _cut_title(film, lambda sent, letters: letters, topic_prefix="storage2", media_retry_s=0.0)
    (letter,) = [decode_msg(x) for x in letters]
    assert "Input/output error" in letter.reason and "media_retry_s" in letter.reason, letter.reason
    assert sent == [] and worker_exits == []


def test_media_retry_s_counts_from_the_first_storage_fault_not_from_a_triton_outage_before_it():
    """The first version counted media_retry_s from the call's start: a title that waited out a Triton outage
    longer than it was dead-lettered at its first storage fault."""
    from types import SimpleNamespace

    from mediafm.errors import TritonUnavailable
    from streams.runtime import Runtime

    faults = [TritonUnavailable("down"), MediaUnavailable("stale"), MediaUnavailable("stale")]
    rt = SimpleNamespace(settings=Settings(media_retry_s=0.05))

    async def call():
        if faults:
            e = faults.pop(0)
            if isinstance(e, TritonUnavailable):
                await asyncio.sleep(0.2)  # an outage longer than media_retry_s
            raise e
        return "cut"

    assert asyncio.run(Runtime.patiently(rt, "t", call, first_s=0.01, most_s=0.01)) == "cut"
    faults[:] = [MediaUnavailable("stale")] * 20
    with pytest.raises(BadInput, match="media_retry_s"):
        asyncio.run(Runtime.patiently(rt, "t", call, first_s=0.01, most_s=0.01))
