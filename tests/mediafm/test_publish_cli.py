"""`mediafm publish title|live`: --meta as inline JSON or a file, and paths that are not regular files named."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mediafm.cli import main
from mediafm.errors import MediaError
from mediafm.publish import _load_meta


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
    assert _load_meta('{"title": "x", "tags": ["a"]}') == {"title": "x", "tags": ["a"]}
    assert _load_meta('  {"title": "x"}') == {"title": "x"}
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"title_id": "tt1", "synopsis": "s"}))
    assert _load_meta(str(f)) == _load_meta(f) == {"title_id": "tt1", "synopsis": "s"}
    assert _load_meta(None) == {} and _load_meta({"a": 1}) == {"a": 1}
    with pytest.raises(MediaError, match="read as inline JSON"):
        _load_meta("{")


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
