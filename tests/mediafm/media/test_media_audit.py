"""Timed text and help text an audit found wrong (2026-12): each test says what went wrong before."""

from __future__ import annotations

import argparse
import json

from mediafm.media.subtitles import Cue, load_subtitles, write_webvtt


def _vtt(tmp_path, body: str, name: str = "cues.vtt"):
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return load_subtitles(path)


def test_webvtt_cue_identifiers_are_not_text(tmp_path):
    """An identifier line before a cue's timing line named the cue; it was glued onto the previous cue's text
    ("First cue scene-2")."""
    cues = _vtt(tmp_path, "WEBVTT\n\nintro\n00:00:00.500 --> 00:00:01.500\nFirst cue\n\n"
                          "scene-2\n00:00:02.500 --> 00:00:03.500\nSecond cue\n\n"
                          "3\n00:04.500 --> 00:05.500 line:0 position:20%\nThird cue\n")
    assert cues == [Cue(0.5, 1.5, "First cue"), Cue(2.5, 3.5, "Second cue"), Cue(4.5, 5.5, "Third cue")]


def test_webvtt_character_references_are_decoded(tmp_path):
    """`&amp;` and `&lt;3` went to the text encoder as written. Tags go first: `&lt;b&gt;` is text, not a tag."""
    cues = _vtt(tmp_path, "WEBVTT\n\n00:00:00.500 --> 00:00:01.500\n<v Roger>Fish &amp; chips &lt;3</v>\n"
                          "&lt;b&gt;&nbsp;caf&#233; &#x263A; &gt; <i>ok</i>\n")
    assert cues == [Cue(0.5, 1.5, "Fish & chips <3 <b> café \u263a > ok")]


def test_webvtt_note_style_and_region_blocks_are_passed_over(tmp_path):
    cues = _vtt(tmp_path, "WEBVTT - a title\nKind: captions\n\nSTYLE\n::cue { color: yellow }\n\n"
                          "REGION\nid:fred width:40%\n\nNOTE a comment\nover two lines\n\n"
                          "00:00:00.500 --> 00:00:01.500 region:fred\n<c.yellow>First</c> <00:00:01.000>karaoke\n\n"
                          "NOTE\nanother\n\n00:00:02.000 --> 00:00:03.000\nSecond\n")
    assert cues == [Cue(0.5, 1.5, "First karaoke"), Cue(2.0, 3.0, "Second")]


def test_a_cue_line_of_digits_stays_in_its_cue(tmp_path):
    """A line of digits in a cue's text is text, in WebVTT (only a line before the timing line names a cue)
    and in SRT (whose cue numbers are such lines)."""
    vtt = _vtt(tmp_path, "WEBVTT\n\n1\n00:00:01.000 --> 00:00:02.000\nThe year was\n1984\n\n"
                         "2\n00:00:03.000 --> 00:00:04.000\n42\n")
    srt = _vtt(tmp_path, "1\n00:00:01,000 --> 00:00:02,000\nThe year was\n1984\n\n"
                         "2\n00:00:03,000 --> 00:00:04,000\n42\n\n", name="cues.srt")
    assert vtt == srt == [Cue(1.0, 2.0, "The year was 1984"), Cue(3.0, 4.0, "42")]


def test_written_webvtt_reads_back_the_same_text(tmp_path):
    """write_webvtt (a live event's per-segment timed text) writes `&` `<` `>` as references, so text that
    looks like a tag or a reference reads back as it was."""
    cues = [Cue(0.5, 1.5, "Fish & chips <3"), Cue(2.0, 3.0, "AT&amp;T <b>bold</b> -->")]
    assert load_subtitles(write_webvtt(cues, tmp_path / "seg.vtt")) == cues


def test_the_meta_example_in_embed_help_is_accepted():
    """`mediafm embed --help` showed a --meta document with "kind": "title", which the command refuses
    (meta has unknown keys ['kind'])."""
    from mediafm.cli import build_parser
    from mediafm.schema import TitleMeta

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    example = json.loads(sub.choices["embed"].epilog.split("--meta JSON:", 1)[1])
    meta = TitleMeta.from_dict(example, title_id=example["title_id"])
    assert meta.tags == ["..."] and meta.genres == [4]
