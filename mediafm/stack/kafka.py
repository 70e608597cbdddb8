"""A real Apache Kafka broker, single-node KRaft, from Maven Central jars.

No Docker on our machines, so we run the broker's own main class with Java 17:
Maven resolves `org.apache.kafka:kafka_2.13` and its runtime classpath once
into the cache dir; the broker keeps its data and logs under the state dir.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from mediafm.config import Settings
from mediafm.errors import MissingToolError, StackError
from mediafm.schema import MAX_MESSAGE_BYTES
from mediafm.stack.process import Service, require_free_ports, start_and_wait, wait_until

# Kafka 3.9 logs through SLF4J 1.7 and needs a binding on the classpath.
_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.mediafm</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{version}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId><version>1.7.36</version></dependency>
    <dependency><groupId>ch.qos.reload4j</groupId><artifactId>reload4j</artifactId><version>1.2.25</version></dependency>
  </dependencies>
</project>
"""

_LOG4J = """log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=WARN
log4j.logger.state.change.logger=WARN
"""


def _home(settings: Settings) -> Path:
    return settings.cache_dir / f"kafka-{settings.kafka_version}"


def _dir(settings: Settings) -> Path:
    return settings.state_dir / "kafka"


def service(settings: Settings) -> Service:
    d = _dir(settings)
    return Service("kafka", d / "kafka.pid", d / "kafka.log", marker=str(d / "server.properties"))


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise MissingToolError("kafka: `java` not found; install Java 17 (apt-get install openjdk-17-jre-headless)")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    try:
        major = int(out.split('"')[1].split(".")[0])
    except (IndexError, ValueError):
        major = 0
    if major < 17:
        raise MissingToolError(f"kafka: needs Java >= 17, found {out.splitlines()[0] if out else 'unknown'}; "
                               "install openjdk-17-jre-headless")
    return java


def install(settings: Settings, *, quiet: bool = True) -> Path:
    """Resolve the broker's jars into the cache (once). Returns the libs dir."""
    home = _home(settings)
    libs = home / "libs"
    done = home / ".complete"
    if done.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise MissingToolError("kafka: `mvn` not found; install Maven (apt-get install maven) to fetch the broker jars")
    home.mkdir(parents=True, exist_ok=True)
    (home / "pom.xml").write_text(_POM.format(version=settings.kafka_version))
    tmp = home / "libs.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [mvn, "-B", *(["-q"] if quiet else []), "-f", str(home / "pom.xml"),
           "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).splitlines()[-8:])
        raise StackError(f"kafka: downloading Kafka {settings.kafka_version} jars from Maven Central failed "
                         f"(check the network and the version MEDIAFM_KAFKA_VERSION):\n{tail}")
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)  # atomic: a half-downloaded classpath is never used
    done.write_text(settings.kafka_version + "\n")
    return libs


def _cluster_id() -> str:
    # What `kafka-storage.sh random-uuid` prints: base64url of 16 random bytes, no padding, and (as in
    # Kafka's Uuid.randomUuid) never starting with "-", which the storage tool would read as an option.
    while (cid := base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()).startswith("-"):
        pass
    return cid


def _write_config(settings: Settings) -> Path:
    d = _dir(settings)
    d.mkdir(parents=True, exist_ok=True)
    h, p, c = settings.bind_host, settings.kafka_port, settings.kafka_controller_port
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{h}:{c}",
        "listeners": f"PLAINTEXT://{h}:{p},CONTROLLER://{h}:{c}",
        "advertised.listeners": f"PLAINTEXT://{h}:{p}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(d / "data"),
        # Topics are created explicitly with Settings.partitions (mediafm/topics.py);
        # auto-creation would pick another count and faust would refuse to start.
        "auto.create.topics.enable": "false",
        "num.partitions": str(settings.partitions),
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "offsets.topic.num.partitions": "8",
        "group.initial.rebalance.delay.ms": str(settings.kafka_group_join_delay_ms),
        "message.max.bytes": str(MAX_MESSAGE_BYTES + 64 * 1024),
        "log.cleaner.dedupe.buffer.size": str(2 * 1024 * 1024),
        "log.retention.hours": "168",
    }
    cfg = d / "server.properties"
    cfg.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    (d / "log4j.properties").write_text(_LOG4J)
    return cfg


def ready(settings: Settings, *, timeout_s: float = 2.0) -> bool:
    """True when the broker answers a metadata request listing itself."""
    from kafka import KafkaAdminClient  # lazy: kafka-python is slow to import
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap,
                                 request_timeout_ms=int(timeout_s * 1000))
    except (KafkaError, OSError):
        return False
    try:
        return bool(admin.describe_cluster().get("brokers"))
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def up(settings: Settings) -> str:
    """Start the broker unless ours already runs. Returns a one-line status."""
    svc = service(settings)
    if svc.alive():
        if ready(settings):
            return f"kafka already running (pid {svc.pid()}) on {settings.kafka_bootstrap}"
        # Half-started or wedged: give it the normal start time, then replace it.
        try:
            wait_until(lambda: ready(settings), timeout_s=settings.start_timeout_s,
                       what="metadata", service=svc)
            return f"kafka already running (pid {svc.pid()}) on {settings.kafka_bootstrap}"
        except StackError:
            svc.stop()
    java = _java()
    libs = install(settings)
    require_free_ports("kafka", settings.bind_host,
                       {"kafka_port": settings.kafka_port, "kafka_controller_port": settings.kafka_controller_port})
    cfg = _write_config(settings)
    cp = f"{libs}/*"
    data = _dir(settings) / "data"
    if not (data / "meta.properties").exists():
        r = subprocess.run([java, "-cp", cp, f"-Dlog4j.configuration=file:{_dir(settings) / 'log4j.properties'}",
                            "kafka.tools.StorageTool", "format", f"--cluster-id={_cluster_id()}", "-c", str(cfg)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise StackError(f"kafka: formatting {data} failed: {(r.stdout + r.stderr).strip()[-500:]}")
    argv = [java, f"-Xmx{settings.kafka_heap}", f"-Xms{settings.kafka_heap}", "-XX:+UseG1GC",
            "-Djava.awt.headless=true", f"-Dlog4j.configuration=file:{_dir(settings) / 'log4j.properties'}",
            "-cp", cp, "kafka.Kafka", str(cfg)]
    pid = svc.start(argv)
    start_and_wait(svc, lambda: ready(settings), timeout_s=settings.start_timeout_s, what="metadata")
    return f"kafka started (pid {pid}) on {settings.kafka_bootstrap}"


def down(settings: Settings, *, wipe: bool = False) -> str:
    stopped = service(settings).stop()
    if wipe:
        shutil.rmtree(_dir(settings) / "data", ignore_errors=True)
    return ("kafka stopped" if stopped else "kafka was not running") + (" (data wiped)" if wipe else "")


def create_topics(settings: Settings, names: list[str], *, configs: dict[str, str] | None = None) -> list[str]:
    """Create the topics with Settings.partitions (and topic `configs`, e.g. retention.ms, for the ones
    created here); check existing ones agree.

    Returns the names that were created. Raises StackError if an existing topic
    has another partition count (faust would refuse to start on it).
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        existing = set(admin.list_topics())
        new = [n for n in names if n not in existing]
        if new:
            try:
                admin.create_topics([NewTopic(n, settings.partitions, 1, topic_configs=configs or {}) for n in new])
            except TopicAlreadyExistsError:
                pass  # another process raced us; the partition check below decides
        deadline = time.monotonic() + 30
        while True:  # a topic just created may not be in the metadata yet (UNKNOWN_TOPIC_OR_PARTITION)
            described = admin.describe_topics(names)
            if all(t["error_code"] == 0 for t in described) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        name = lambda t: t.get("name", t.get("topic"))  # noqa: E731 - kafka-python 3 says name, 2 topic
        missing = [name(t) for t in described if t["error_code"] != 0]
        if missing:
            raise StackError(f"topics {missing} are not in the broker's metadata 30 s after creating them; "
                             f"see {settings.state_dir / 'kafka' / 'kafka.log'}")
        wrong = {name(t): len(t["partitions"]) for t in described if len(t["partitions"]) != settings.partitions}
        if wrong:
            raise StackError(f"topics {wrong} exist with another partition count than "
                             f"partitions={settings.partitions}; delete them or set MEDIAFM_PARTITIONS to match")
        return new
    finally:
        admin.close()
