"""`mediafm publish title|live`: --meta as inline JSON or a file, and paths that are not regular files named."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mediafm.cli import main
from mediafm.errors import MediaError
from mediafm.publish import load_meta


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Settings of the CLI: a private state dir, a port where no broker listens (nothing here reaches one)."""
    from conftest import free_port

    monkeypatch.delenv("MEDIAFM_CONFIG", raising=False)
    monkeypatch.setenv("MEDIAFM_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("MEDIAFM_KAFKA_PORT", str(free_port()))
    monkeypatch.chdir(tmp_path)  # no ./mediafm.toml
    media = tmp_path / "film.mp4"
    media.write_bytes(b"not decoded by publish")
    return media


def _err(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    return capsys.readouterr().err.strip()


def test_dev_zero_is_named_a_character_device(env, tmp_path):
    r = subprocess.run([sys.executable, "-m", "mediafm.cli", "publish", "title", "/dev/zero"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ("mediafm publish: error: /dev/zero: exists but is a character device, not a regular "
                                "file; pass a media file")


def test_media_path_kinds(env, tmp_path, capsys):
    assert _err(capsys, "publish", "title", str(tmp_path)).endswith(
        f"{tmp_path}: exists but is a directory, not a regular file; pass a media file")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert _err(capsys, "publish", "title", str(fifo)).endswith(
        f"{fifo}: exists but is a FIFO (named pipe), not a regular file; pass a media file")
    assert _err(capsys, "publish", "title", str(tmp_path / "nope.mp4")).endswith(
        f"{tmp_path / 'nope.mp4'}: no such file; pass the media file to publish")
    (tmp_path / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    assert _err(capsys, "publish", "title", str(tmp_path / "dangling.mp4")).endswith(
        "dangling.mp4: no such file (a symbolic link to a missing file); pass the media file to publish")
    # live events too, before ffmpeg is asked to cut anything
    assert _err(capsys, "publish", "live", "/dev/zero").endswith(
        "/dev/zero: exists but is a character device, not a regular file; pass a media file")


def test_subtitles_path_kinds(env, tmp_path, capsys):
    assert _err(capsys, "publish", "title", str(env), "--subtitles", "/dev/zero").endswith(
        "/dev/zero: exists but is a character device, not a regular file; pass a subtitle file")
    assert _err(capsys, "publish", "title", str(env), "--subtitles", str(tmp_path)).endswith(
        f"{tmp_path}: exists but is a directory, not a regular file; pass a subtitle file")
    assert _err(capsys, "publish", "title", str(env), "--subtitles", "nope.srt").endswith(
        "nope.srt: no such file; pass the subtitle file to publish")
    assert not (tmp_path / "state" / "media").exists(), "nothing staged before the subtitles were checked"


def test_meta_file_path_kinds(env, tmp_path, capsys):
    err = _err(capsys, "publish", "title", str(env), "--meta", "/dev/null")
    assert err == ("mediafm publish: error: metadata (--meta) '/dev/null' does not start with '{', so it was taken "
                   "as a file path, but /dev/null: exists but is a character device, not a regular file; pass a "
                   'JSON file, or inline JSON like {"title": "...", "synopsis": "...", "tags": ["..."]}')
    assert "exists but is a directory, not a regular file" in _err(capsys, "publish", "title", str(env), "--meta",
                                                                    str(tmp_path))
    err = _err(capsys, "publish", "live", str(env), "--meta", "film.json")
    assert "'film.json' does not start with '{', so it was taken as a file path, but film.json: no such file" in err


def test_meta_inline_json_errors(env, capsys):
    err = _err(capsys, "publish", "title", str(env), "--meta", '{"title": x}')
    assert err == ("mediafm publish: error: metadata read as inline JSON (the --meta value starts with '{') is not "
                   """valid JSON: Expecting value at character 10 of '{"title": x}'; pass a JSON object like """
                   '{"title": "...", "synopsis": "...", "tags": ["..."]} (quoted for the shell), or the path of a '
                   "JSON file")
    err = _err(capsys, "publish", "title", str(env), "--meta", "[1, 2]")  # not '{': a path, and no such file
    assert "'[1, 2]' does not start with '{', so it was taken as a file path, but [1, 2]: no such file" in err


def test_meta_file_content_errors(env, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"title": ')
    err = _err(capsys, "publish", "title", str(env), "--meta", str(bad))
    assert f"metadata read from the file {bad} (the --meta value does not start with '{{', so it is taken as a " \
           "path) is not valid JSON: Expecting value: line 1 column 11 (char 10); the file must hold a JSON object" in err
    bad.write_text("[1, 2]")
    assert _err(capsys, "publish", "title", str(env), "--meta", str(bad)).endswith(
        "must be a JSON object like {\"title\": \"...\", \"synopsis\": \"...\", \"tags\": [\"...\"]}, got a JSON list")
    bad.write_bytes(b"\xff\xfe{}")
    assert "could not be read: 'utf-8' codec can't decode byte 0xff" in _err(capsys, "publish", "title", str(env),
                                                                              "--meta", str(bad))


def test_meta_inline_or_file_read(tmp_path):
    assert load_meta('{"title": "x", "tags": ["a"]}') == {"title": "x", "tags": ["a"]}
    assert load_meta('  {"title": "x"}') == {"title": "x"}
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"title_id": "tt1", "synopsis": "s"}))
    assert load_meta(str(f)) == load_meta(f) == {"title_id": "tt1", "synopsis": "s"}
    assert load_meta(None) == {} and load_meta({"a": 1}) == {"a": 1}
    with pytest.raises(MediaError, match="read as inline JSON"):
        load_meta("{")


@pytest.mark.kafka
def test_publish_title_with_inline_meta(kafka_stack, tmp_path):
    """The command of issue 15 item 6 on a real broker: the request carries the inline metadata."""
    import uuid

    from conftest import REPO, settings_env

    from mediafm.bus import Tail
    from mediafm.schema import TitleRequest, decode
    from mediafm.topics import Topics

    media = tmp_path / "film.mp4"
    media.write_bytes(b"x")
    tid = f"inline-{uuid.uuid4().hex[:6]}"
    tail = Tail(kafka_stack, Topics.from_settings(kafka_stack).titles)  # from the end: only what comes next
    try:
        r = subprocess.run([sys.executable, "-m", "mediafm.cli", "publish", "title", str(media), "--id", tid,
                            "--meta", '{"title": "x", "tags": ["a b"]}'], env=settings_env(kafka_stack), cwd=REPO,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert f"published title {tid}" in r.stdout
        got = None
        for rec in tail.poll(timeout_s=60):
            m = decode(rec.value, expect=TitleRequest)
            if m.title_id == tid:
                got = m
                break
    finally:
        tail.close()
    assert got is not None and got.meta == {"title": "x", "tags": ["a b"]}


def test_staged_media_stays_under_the_root_and_never_stands_for_another_file(tmp_path):
    """A title id is any printable text: as a path, `../../x` staged the media outside the root. And a second
    publish of another film.mp4 under the same id returned the first one's staged file, so the old media was
    embedded again without a word."""
    from mediafm.config import Settings
    from mediafm.media.decode import under_roots
    from mediafm.publish import stage_media

    root = tmp_path / "media"
    root.mkdir()
    settings = Settings(media_roots=(str(root),), state_dir=tmp_path / "state")
    first, second = tmp_path / "a" / "film.mp4", tmp_path / "b" / "film.mp4"
    for f, body in ((first, b"\x01" * 100), (second, b"\x02" * 300)):
        f.parent.mkdir()
        f.write_bytes(body)
    for tid in ("../../escaped", "..", "/abs/olute", "show/s01e01"):
        staged = stage_media(settings, first, tid)
        assert under_roots(staged, [str(root)]) and staged.read_bytes() == first.read_bytes(), (tid, staged)
    a, b = stage_media(settings, first, "tt1"), stage_media(settings, second, "tt1")
    assert a != b and (a.read_bytes(), b.read_bytes()) == (first.read_bytes(), second.read_bytes())
    assert stage_media(settings, first, "tt1") == a, "the same file again: its staged copy"
    assert not (tmp_path / "escaped").exists()


def test_what_a_worker_would_refuse_is_refused_before_anything_is_staged_or_cut(env, tmp_path, capsys):
    """The worker checks a request's metadata and id, and dead-letters what it refuses. Before, the publisher
    checked neither: `publish live --meta '{"titel": ...}'` cut the whole film, published every segment, said
    "published", and the worker dead-lettered segment 0 and then every other. Now the publisher refuses it first,
    with the worker's own words, before any media is staged or cut."""
    media_root = tmp_path / "state" / "media"
    cases = [
        (["title", "--meta", '{"titel": "x"}'], "meta has unknown keys ['titel']"),
        (["live", "--meta", '{"title": "x", "tags": "drama"}'], "meta.tags"),
        (["live", "--meta", '{"title_id": 5}'], "the metadata's title_id is 5, a JSON int; an id is a string"),
        (["title", "--id", "a\x07b"], "control characters"),
        (["live", "--id", "x" * 600], "over the 512 limit"),
        (["title", "--id", "tt02", "--meta", '{"synopsis": "' + "w" * 40_000 + '"}'], "over the 32000 limit"),
    ]
    for (what, *flags), said in cases:
        err = _err(capsys, "publish", what, str(env), *flags)
        assert err.startswith("mediafm publish: error: ") and said in err, (flags, err)
        assert not media_root.exists() or not any(media_root.rglob("*.*")), f"{flags}: media staged or cut"


def test_a_live_event_published_again_under_its_id_is_refused(env, tmp_path, capsys):
    """`publish live` writes an event's segments under <media root>/live/<event id>. Before, a second publication
    under the same id (the default id is the file's name: two match.mp4) deleted and rewrote the segment files the
    first event's messages name, under a worker maybe still reading them, and a finished event takes no new
    segments anyway. Now it is refused, naming the folder, and the first event's segments are left as they are.
    A publication that sent nothing (here: no broker) is no publication: its id is not refused, and the broker is
    found missing before any segment is cut."""
    seg = tmp_path / "state" / "media" / "live" / "film" / "seg00000.ts"
    seg.parent.mkdir(parents=True)
    seg.write_bytes(b"an attempt's segment, never sent")
    err = _err(capsys, "publish", "live", str(env))  # the id: the file's name, film; no broker
    assert "no Kafka broker answered" in err, err
    assert seg.read_bytes() == b"an attempt's segment, never sent", "nothing cut before the broker was found"
    (seg.parent / ".sent").touch()  # as a publication leaves it once its first segment is on the broker
    err = _err(capsys, "publish", "live", str(env))
    assert "live event 'film' was published before" in err and "a new broadcast needs a new event id (--id)" in err
    assert seg.read_bytes() == b"an attempt's segment, never sent"


def test_no_broker_and_an_id_too_long_for_a_folder_name_are_said_in_one_line(env, tmp_path, capsys):
    """An id of 35 CJK characters (within the 512 an id may have) quotes to 315 bytes: as a folder name (the
    staged media's) mkdir failed with OSError 36, a traceback. And no broker answering (after the 30 s kafka-python
    waits for one) was its KafkaTimeoutError "Unable to bootstrap", a traceback too. Now the folder name is
    shortened with a hash, and the missing broker is one line naming its address."""
    tid = "映画のタイトル" * 5
    err = _err(capsys, "publish", "title", str(env), "--id", tid)
    assert err.startswith("mediafm publish: error: no Kafka broker answered at 127.0.0.1:"), err
    assert "`mediafm stack status`" in err and "\n" not in err
    staged = [p for p in (tmp_path / "state" / "media").rglob("film.mp4")]
    assert len(staged) == 1 and all(len(part.encode()) <= 255 for part in staged[0].parts), staged


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_settings_file_before_the_trainers_commands_is_passed_over(tmp_path, capsys, command):
    """`mediafm [--config FILE] COMMAND`, as the usage line says: before 2026-12-08 `mediafm --config f.toml train`
    was an AttributeError (and with its arguments, "unrecognized arguments")."""
    from mediafm.cli import main

    (tmp_path / "f.toml").write_text("")
    for lead in (["--config", str(tmp_path / "f.toml")], [f"--config={tmp_path / 'f.toml'}"]):
        args = ["--data", str(tmp_path / "no-such-dataset")] + (["--out", str(tmp_path / "run")]
                                                                if command == "train" else ["--run", str(tmp_path), "--out", str(tmp_path / "e")])
        assert main([*lead, command, *args]) == 2
        err = capsys.readouterr().err
        assert f"mediafm {command}: error:" in err and "no-such-dataset" in err, err


def test_embeds_meta_is_read_as_publishs_inline_json_or_a_file(tmp_path):
    """`mediafm embed --meta` took a path only, and its error offered inline JSON as the fix (before 2026-12-08)."""
    from mediafm.errors import MediaError
    from mediafm.schema import TitleMeta

    assert TitleMeta.load('{"title": "Film", "tags": ["a"]}', default_id="f") == TitleMeta("f", title="Film", tags=["a"])
    (tmp_path / "m.json").write_text('{"title_id": "tt9", "synopsis": "s"}')
    assert TitleMeta.load(str(tmp_path / "m.json"), default_id="f") == TitleMeta("tt9", synopsis="s")
    assert TitleMeta.load(None, default_id="f") == TitleMeta("f")
    with pytest.raises(MediaError, match=r"metadata \(--meta\): meta has unknown keys \['titl'\]"):
        TitleMeta.load('{"titl": "x"}', default_id="f")
    with pytest.raises(MediaError, match="taken as a file path, but .*no such file"):
        TitleMeta.load(str(tmp_path / "none.json"), default_id="f")
