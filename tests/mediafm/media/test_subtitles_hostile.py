"""Hostile subtitle files a security audit found (2026-12): each test says what went wrong before.

The long-cue tests carry a pytest-timeout of 20 s: before the fix those cues took from half a minute to
many minutes (quadratic regular expressions), now they take milliseconds; no test asserts on timing.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from mediafm.errors import SubtitleError
from mediafm.media import subtitles
from mediafm.media.subtitles import MAX_CUE_CHARS, Cue, check_encoding, load_subtitles

SRT_HEAD = "1\n00:00:00,000 --> 00:00:01,000\n"
VTT_HEAD = "WEBVTT\n\n00:00.000 --> 00:01.000\n"
ASS_HEAD = ("[Script Info]\nScriptType: v4.00+\n\n[V4+ Styles]\n"
            "Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, "
            "Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, "
            "MarginL, MarginR, MarginV, Encoding\n"
            "Style: Default,Arial,20,&H00FFFFFF,&H000000FF,&H00000000,&H00000000,0,0,0,0,100,100,0,0,1,2,2,2,10,10,10,1"
            "\n\n[Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n")


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- 1. encodings: codecs.lookup knows codecs that are not text encodings -------------------------------

@pytest.mark.parametrize("encoding", ["rot13", "hex_codec", "base64", "zlib_codec", "punycode", "klingon-8"])
def test_a_non_text_encoding_is_a_subtitle_error_naming_it(tmp_path, encoding):
    """Before: rot13/hex_codec/base64/zlib_codec raised LookupError ("is not a text encoding") and punycode
    UnicodeError, neither a SubtitleError, and a live agent that caught only SubtitleError crashed."""
    path = _write(tmp_path, "a.srt", SRT_HEAD + "hello\n")
    with pytest.raises(SubtitleError, match=encoding) as e:
        load_subtitles(path, encoding=encoding)
    assert "utf-8" in str(e.value)  # says what to use instead
    with pytest.raises(SubtitleError, match=encoding):
        check_encoding(encoding)


@pytest.mark.parametrize("encoding", ["", "utf-8\x00", "x" * 10_000])
def test_odd_encoding_names_are_refused_up_front(encoding):
    with pytest.raises(SubtitleError, match="unknown text encoding"):
        check_encoding(encoding)


@pytest.mark.parametrize("encoding", ["utf-8", "UTF8", "cp1252", "latin-1", "utf-16", "utf-8-sig", "iso8859-15"])
def test_text_encodings_pass_the_check(encoding):
    check_encoding(encoding)


def test_a_file_in_a_named_text_encoding_still_reads(tmp_path):
    path = tmp_path / "a.srt"
    path.write_bytes((SRT_HEAD + "Ça va très bien\n").encode("cp1252"))
    assert load_subtitles(path, encoding="cp1252") == [Cue(0.0, 1.0, "Ça va très bien")]


def test_the_encoding_check_imports_nothing_heavy():
    """A message schema calls check_encoding: importing the module must not pull in PyAV, numpy or pysubs2."""
    code = ("import sys; from mediafm.media.subtitles import check_encoding; check_encoding('utf-8'); "
            "print(sorted(m for m in ('av', 'numpy', 'pysubs2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- 2. long cues: tag patterns were quadratic on runs of unclosed `<` or `{` ------------------------------

LONG = 200_000


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name, text", [
    ("lt.srt", SRT_HEAD + "<" * LONG + "\n"),          # before: `<[^>]+>` in _clean, ~40 s
    ("lt.vtt", VTT_HEAD + "<" * LONG + "\n"),          # before: `<[^>]*>` in the WebVTT reader
    ("brace.srt", SRT_HEAD + "{" * LONG + "\n"),       # before: pysubs2's plaintext `{[^}]*}` and _clean
    ("brace.ass", ASS_HEAD + "Dialogue: 0,0:00:00.00,0:00:01.00,Default,,0,0,0,," + "{" * LONG + "\n"),
    ("lt_a.srt", SRT_HEAD + "<a" * LONG + "\n"),       # before: pysubs2's SRT tag stripping `< */? *[a-zA-Z][^>]*>`
    ("nested.vtt", VTT_HEAD + "<b><i><c.x>" * (LONG // 10) + "deep" + "</c></i></b>" * (LONG // 10) + "\n"),
])
def test_a_huge_cue_loads_and_is_cut(tmp_path, caplog, name, text):
    path = _write(tmp_path, name, text)
    cues = load_subtitles(path)
    assert len(cues) == 1 and (cues[0].start_s, cues[0].end_s) == (0.0, 1.0)
    assert 0 < len(cues[0].text) <= MAX_CUE_CHARS
    assert "cut" in caplog.text and str(path) in caplog.text  # the cut is noted once, naming the file
    assert caplog.text.count("cut to that length") == 1


@pytest.mark.timeout(20)
def test_a_cue_of_many_blank_lines_loads(tmp_path):
    r"""Before: pysubs2's SRT reader strips a cue's trailing number with r"\n+ *\d+ *$", which rescanned a run
    of newlines from each of them: minutes for this cue. Runs of blank lines are now read as one."""
    path = _write(tmp_path, "newlines.srt", SRT_HEAD + "x" + "\n" * LONG + "y\n")
    assert load_subtitles(path) == [Cue(0.0, 1.0, "x y")]


def test_blank_lines_inside_an_srt_cue_do_not_change_its_text(tmp_path):
    path = _write(tmp_path, "a.srt", SRT_HEAD + "one\n\n\n\n  \ntwo\n\n\n2\n00:00:02,000 --> 00:00:03,000\nthree\n")
    assert load_subtitles(path) == [Cue(0.0, 1.0, "one two"), Cue(2.0, 3.0, "three")]


# --- normal tags are still removed ------------------------------------------------------------------------

def test_srt_tags_and_override_blocks_are_removed(tmp_path):
    path = _write(tmp_path, "a.srt", SRT_HEAD + '{\\an8}<i>Hello</i>, <b>dear</b> <font color="red">friend</font>\n'
                  "I <3 you\n\n2\n00:00:02,000 --> 00:00:03,000\n<u>under</u> <s>struck</s> a < b\n")
    assert load_subtitles(path) == [Cue(0.0, 1.0, "Hello, dear friend I <3 you"),
                                    Cue(2.0, 3.0, "under struck a < b")]


def test_ass_override_blocks_and_line_breaks_are_removed(tmp_path):
    path = _write(tmp_path, "a.ass", ASS_HEAD
                  + "Dialogue: 0,0:00:01.00,0:00:02.50,Default,,0,0,0,,{\\an8}{\\i1}Hello{\\i0}\\Nworld\\hagain\n"
                  + "Comment: 0,0:00:03.00,0:00:04.00,Default,,0,0,0,,not shown\n")
    assert load_subtitles(path) == [Cue(1.0, 2.5, "Hello world again")]


def test_ass_drawings_are_not_text(tmp_path):
    """Typeset ASS (signs, masks) draws vector shapes between {\\p1} and {\\p0} (or the end of the line): the
    path commands were kept as the shot's text ("m 0 0 l 1920 0 ..."). \\pos and \\pbo are not drawing mode."""
    path = _write(tmp_path, "a.ass", ASS_HEAD
                  + "Dialogue: 0,0:00:01.00,0:00:02.00,Default,,0,0,0,,{\\p1}m 0 0 l 1920 0 1920 1080 0 1080{\\p0}\n"
                  + "Dialogue: 0,0:00:02.00,0:00:03.00,Default,,0,0,0,,{\\pos(960,80)}Exit{\\p2}m 0 0 b 1 1 2 2\n"
                  + "Dialogue: 0,0:00:03.00,0:00:04.00,Default,,0,0,0,,Mind{\\p1\\pbo5}m 5 5{\\p0} the gap\n")
    assert load_subtitles(path) == [Cue(2.0, 3.0, "Exit"), Cue(3.0, 4.0, "Mind the gap")]


def test_a_shot_shorter_than_the_overlap_asked_for_has_the_cue_it_lies_in():
    """align counts a cue that overlaps a shot by more than 0.05 s: a 1-frame shot (0.04 s) inside a cue never had
    its text. Now more than half of such a shot will do; a cue that only touches it still does not count."""
    from mediafm.media.shots import Shot
    from mediafm.media.subtitles import align

    shots = [Shot(0, 0.0, 0.48, 0, 12), Shot(1, 0.48, 0.52, 12, 13), Shot(2, 0.52, 2.0, 13, 48)]
    assert align([Cue(0.0, 1.0, "hi")], shots) == ["hi", "hi", "hi"]
    assert align([Cue(0.0, 0.49, "touch")], shots) == ["touch", "", ""]
    assert align([Cue(0.51, 2.0, "later")], shots) == ["", "", "later"]


def test_webvtt_voice_class_and_timestamp_tags_are_removed(tmp_path):
    path = _write(tmp_path, "a.vtt", "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\n"
                  "<v Roger><c.yellow>Hi</c> <00:00:01.500>there <b>you</b> &lt;3</v>\n")
    assert load_subtitles(path) == [Cue(1.0, 2.0, "Hi there you <3")]


def test_webvtt_after_leading_blank_lines_is_read_as_webvtt(tmp_path):
    path = _write(tmp_path, "a.srt", "\n\nWEBVTT\n\n00:00.500 --> 00:01.500\n<v Roger>Hello</v>\n")
    assert load_subtitles(path) == [Cue(0.5, 1.5, "Hello")]


# --- 3. formats other than SRT, ASS/SSA and WebVTT bypassed MAX_CUES ------------------------------------

def test_an_mpl2_file_is_refused_naming_its_format(tmp_path):
    """Before: pysubs2's autodetection read `[10][20]text` lines as MPL2, with no `-->` to count: two million
    of them parsed into 1.5 GB."""
    path = _write(tmp_path, "a.txt", "".join(f"[{i}][{i + 1}]x\n" for i in range(150_000)))
    with pytest.raises(SubtitleError, match="'mpl2'") as e:
        load_subtitles(path)
    assert "SRT" in str(e.value) and "WebVTT" in str(e.value)


@pytest.mark.parametrize("fmt, text", [
    ("tmp", "".join(f"00:00:{i:02d}:line {i}\n" for i in range(50))),
    ("microdvd", "{1}{1}25.000\n{25}{50}Hello\n"),
    ("sami", "<SAMI><BODY><SYNC Start=0><P>Hello</SAMI>\n"),
])
def test_other_pysubs2_formats_are_refused_naming_them(tmp_path, fmt, text):
    with pytest.raises(SubtitleError, match=f"'{fmt}'"):
        load_subtitles(_write(tmp_path, "a.sub", text))


def test_srt_timing_lines_without_arrows_count_against_the_limit(tmp_path, monkeypatch):
    """pysubs2 takes any line with two timestamps as an SRT cue; only `-->` was counted before."""
    monkeypatch.setattr(subtitles, "MAX_CUES", 1_000)
    body = "".join(f"00:00:{i // 1000 % 60:02d},{i % 1000:03d} 00:00:59,999\nx\n" for i in range(1_001))
    with pytest.raises(SubtitleError, match="over the limit of 1000"):
        load_subtitles(_write(tmp_path, "a.srt", SRT_HEAD + "hi\n\n" + body))


def test_ass_comment_lines_count_against_the_limit(tmp_path, monkeypatch):
    """Comment events (and indented Dialogue lines) are kept by pysubs2 too; only `\\nDialogue:` was counted."""
    monkeypatch.setattr(subtitles, "MAX_CUES", 1_000)
    body = "Comment: 0,0:00:00.00,0:00:01.00,Default,,0,0,0,,x\n" * 1_001
    with pytest.raises(SubtitleError, match="over the limit of 1000"):
        load_subtitles(_write(tmp_path, "a.ass", ASS_HEAD + body + "Dialogue: 0,0:00:00.00,0:00:01.00,Default,,0,0,0,,hi\n"))


def test_a_file_under_the_limit_still_reads(tmp_path, monkeypatch):
    monkeypatch.setattr(subtitles, "MAX_CUES", 1_000)
    body = "".join(f"{i + 1}\n00:00:{i // 100:02d},{i % 100 * 10:03d} --> 00:00:{i // 100:02d},{i % 100 * 10 + 5:03d}\n"
                   f"cue {i}\n\n" for i in range(1_000))
    cues = load_subtitles(_write(tmp_path, "a.srt", body))
    assert len(cues) == 1_000 and cues[0] == Cue(0.0, 0.005, "cue 0")


# --- 4. memory: the shape of a file under 64 MB decided what the readers held -----------------------------

@pytest.mark.parametrize("name, head, lines", [("a.srt", SRT_HEAD, 2_000_002), ("a.vtt", VTT_HEAD, 2_000_003)])
def test_a_file_of_over_a_million_lines_is_refused_before_either_reader(tmp_path, monkeypatch, name, head, lines):
    """Before: 22 million short lines (63 MB) cost 3.7 GB and 20 s in pysubs2, and 1.9 GB in the WebVTT
    reader (`bench/subtitles.py`), since both hold a file as a list of its lines. Two million lines here (4 MB)."""
    ran = []
    monkeypatch.setattr(subtitles, "_webvtt", lambda *a, **k: ran.append("vtt") or [])
    monkeypatch.setattr(subtitles, "_pysubs2_lines", lambda *a, **k: ran.append("pysubs2") or iter(()))
    path = _write(tmp_path, name, head + "a\n" * 2_000_000)
    with pytest.raises(SubtitleError, match=f"{lines} lines, over the limit of 1000000") as e:
        load_subtitles(path)
    assert str(path) in str(e.value) and ran == []


def _spy_pysubs2(monkeypatch) -> list[str]:
    """The lines pysubs2's reader is handed, whichever way load_subtitles hands them."""
    import pysubs2

    given: list[str] = []
    real = pysubs2.SSAFile.from_file.__func__

    def from_file(cls, fp, *args, **kwargs):
        given.extend(fp)
        return real(cls, iter(given), *args, **kwargs)

    monkeypatch.setattr(pysubs2.SSAFile, "from_file", classmethod(from_file))
    return given


def test_pysubs2_is_handed_each_cue_cut_near_its_limit(tmp_path, monkeypatch, caplog):
    """Before: an SRT cue of 200,000 short lines, or one line of 2 MB, went to pysubs2 whole (it joins a
    cue's lines and rewrites them four times: 690 MB for a 58 MB cue). Now a line is cut at MAX_CUE_CHARS,
    and after a timing line only the lines that start within its first MAX_CUE_CHARS characters pass; the
    cues after it are read as before."""
    given = _spy_pysubs2(monkeypatch)
    many = "y" * 60 + "\n"
    text = (SRT_HEAD + many * 200_000 + "\n2\n00:00:02,000 --> 00:00:03,000\n" + "z" * 2_000_000
            + "\n\n3\n00:00:04,000 --> 00:00:05,000\nthe end\n")
    cues = load_subtitles(_write(tmp_path, "a.srt", text))
    assert [(c.start_s, c.end_s) for c in cues] == [(0.0, 1.0), (2.0, 3.0), (4.0, 5.0)]
    assert cues[0].text.startswith(f"{'y' * 60} {'y' * 60} ") and set(cues[0].text) == {"y", " "}
    assert MAX_CUE_CHARS - 70 < len(cues[0].text) <= MAX_CUE_CHARS
    assert cues[1].text == "z" * MAX_CUE_CHARS and cues[2].text == "the end"
    assert max(map(len, given)) <= MAX_CUE_CHARS + 1
    assert sum(map(len, given)) < 3 * MAX_CUE_CHARS  # about two cues' worth and a few lines, not 14 MB
    assert "1 line(s) over" in caplog.text and "1 cue(s) over" in caplog.text


def test_a_long_ass_dialogue_line_is_cut_and_still_read(tmp_path, monkeypatch):
    given = _spy_pysubs2(monkeypatch)
    text = (ASS_HEAD + "Dialogue: 0,0:00:01.00,0:00:02.00,Default,,0,0,0,," + "w" * 1_000_000 + "\n"
            "Dialogue: 0,0:00:03.00,0:00:04.00,Default,,0,0,0,,after\n")
    cues = load_subtitles(_write(tmp_path, "a.ass", text))
    assert [(c.start_s, c.end_s) for c in cues] == [(1.0, 2.0), (3.0, 4.0)]
    assert cues[0].text.startswith("w") and len(cues[0].text) < MAX_CUE_CHARS and cues[1].text == "after"
    assert max(map(len, given)) <= MAX_CUE_CHARS + 1


@pytest.mark.parametrize("ending", ["\r\n", "\r"])
@pytest.mark.parametrize("name, text", [
    ("a.vtt", "\ufeffWEBVTT\n\nNOTE a comment\n\n1\n00:00.000 --> 00:01.500\n<v Ann>one</v>\ntwo\n\n"
              "00:02.000 --> 00:03.000\nthree\n"),
    ("a.srt", "1\n00:00:00,000 --> 00:00:01,500\none\ntwo\n\n2\n00:00:02,000 --> 00:00:03,000\nthree\n"),
])
def test_windows_and_old_mac_line_endings_give_the_same_cues(tmp_path, ending, name, text):
    """Both readers see one line ending, made once before either runs (_bounded_lines); a file written on
    Windows (CRLF) or by an old Mac tool (CR) gives the cues its LF form gives."""
    want = load_subtitles(_write(tmp_path, name, text))
    assert [(c.start_s, c.end_s) for c in want] == [(0.0, 1.5), (2.0, 3.0)] and "three" in want[1].text
    (tmp_path / "other").mkdir()
    assert load_subtitles(_write(tmp_path / "other", name, text.replace("\n", ending))) == want
