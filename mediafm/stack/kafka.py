"""A real Apache Kafka broker, single-node KRaft, from Maven Central jars.

No Docker on our machines, so we run the broker's own main class with Java 17:
Maven resolves `org.apache.kafka:kafka_2.13` and its runtime classpath once
into the cache dir; the broker keeps its data and logs under the state dir.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import secrets
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from mediafm.config import Settings, replace
from mediafm.errors import ConfigError, MissingToolError, StackError
from mediafm.kafka_security import check_login, principal, sasl_password
from mediafm.schema import MAX_MESSAGE_BYTES
from mediafm.stack.process import Service, port_is_free, require_free_ports, start_and_wait, wait_until
from mediafm.stack.process import wipe as wipe_dir

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
log4j.logger.org.apache.kafka.common.network.Selector=INFO
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


_USER = re.compile(r"[A-Za-z0-9._-]{1,64}")
_PASSWORD = re.compile(r"[^\\\"',\]=\s]{8,256}")


def _local_user(settings: Settings) -> tuple[str, str]:
    """The SASL user and password the local broker is set up with, checked for what its files can hold: a user
    name of letters, digits, `.`, `_` and `-`; a password of 8-256 characters with no space, quote, backslash,
    comma, `]` or `=` (the properties file, JAAS and the storage tool's NAME=[name=...,password=...] syntax)."""
    user, password = settings.kafka_sasl_username, sasl_password(settings)
    if not _USER.fullmatch(user):
        raise ConfigError(f"kafka_sasl_username={user[:64]!r}: the local broker's user name is 1-64 letters, digits, "
                          "'.', '_' or '-'")
    if not _PASSWORD.fullmatch(password):
        raise ConfigError(f"${settings.kafka_sasl_password_env}: the local broker's password is 8-256 characters "
                          "with no space, quote, backslash, ',', ']' or '='")
    return user, password


def _jaas(module: str, user: str, password: str, *, plain_users: dict[str, str] | None = None) -> str:
    users = "".join(f' user_{name}="{pw}"' for name, pw in (plain_users or {}).items())
    return f'org.apache.kafka.common.security.{module} required username="{user}" password="{password}"{users};'


BROKER_USER = "mediafm-broker"
"""With kafka_acls, the user the local broker logs in to itself as: its super user, which no client is given."""


def _broker_user(settings: Settings) -> tuple[str, str]:
    """With kafka_acls, the broker's own user and its password (made once, random, in <state_dir>/kafka/broker.pass,
    mode 0600); without, the configured user, as before."""
    if not settings.kafka_acls:
        return _local_user(settings)
    secret = _dir(settings) / "broker.pass"
    if not secret.exists():
        secret.parent.mkdir(parents=True, exist_ok=True)
        secret.touch(mode=0o600)
        secret.write_text(secrets.token_urlsafe(24))
    return BROKER_USER, secret.read_text().strip()


def _sasl_props(settings: Settings) -> dict[str, str]:
    """With kafka_security_protocol SASL_PLAINTEXT or SASL_SSL: every listener asks for SASL, the broker logs in
    to itself as the configured user, and that user is the only one (without kafka_acls). SCRAM users live in the cluster's metadata
    (made when the storage is formatted, `_scram_user`); the controller listener takes PLAIN, since a controller
    reads SCRAM credentials from the metadata it serves. Loopback by default, and over TLS with SASL_SSL.
    With kafka_acls the broker checks ACLs and logs in to itself as a user of its own (BROKER_USER), its one super
    user; the configured user gets only what `up` grants it (mediafm/acls.py)."""
    proto = settings.kafka_security_protocol
    if not proto.startswith("SASL_"):
        return {}
    mech, (user, password) = settings.kafka_sasl_mechanism, _local_user(settings)
    me, mine = _broker_user(settings)
    props = {
        "sasl.enabled.mechanisms": mech,
        "sasl.mechanism.inter.broker.protocol": mech,
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config": _jaas("plain.PlainLoginModule", me, mine,
                                                                 plain_users={me: mine}),
    }
    name = f"listener.name.{proto.lower()}.{mech.lower()}.sasl.jaas.config"
    props[name] = (_jaas("plain.PlainLoginModule", me, mine, plain_users={me: mine, user: password})
                   if mech == "PLAIN" else _jaas("scram.ScramLoginModule", me, mine))
    if settings.kafka_acls:
        props.update(_authorizer_props([f"User:{BROKER_USER}"]))
    return props


def _authorizer_props(super_users: list[str]) -> dict[str, str]:
    """With kafka_acls: KRaft's StandardAuthorizer, which denies what no ACL grants, and the principals that may
    do anything (the broker's own, and the one that grants the rest)."""
    return {"authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": ";".join(super_users), "allow.everyone.if.no.acl.found": "false"}


BROKER_SUBJECT = "CN=mediafm local kafka"
"""The subject of the local broker's certificate: with SSL its principal, User:CN=mediafm local kafka."""
ADMIN_SUBJECT = "CN=mediafm local admin"
"""With SSL and kafka_acls, the subject of the certificate `stack up` grants the pipeline's ACLs with (a super
user); no client is given it."""


def certificate(settings: Settings) -> Path:
    """The local broker's self-signed certificate (PEM), made by `stack up` with SSL or SASL_SSL: what
    kafka_ssl_cafile names for clients of that broker."""
    return _dir(settings) / "tls" / "broker.pem"


def _keytool(java: str) -> str:
    tool = Path(java).resolve().parent / "keytool"  # the JDK's own, beside the java that runs the broker
    if not tool.exists():
        raise MissingToolError(f"kafka: `keytool` not found beside {java}; it makes the local broker's TLS "
                               "certificate (part of openjdk-17-jre-headless)")
    return str(tool)


def _tls_props(settings: Settings, java: str) -> dict[str, str]:
    """With kafka_security_protocol SSL or SASL_SSL: every listener speaks TLS with a self-signed certificate for
    bind_host (made once with the JDK's keytool: RSA 2048, ten years; `stack down --wipe` makes a new one), which
    the broker also trusts for its connections to itself. Clients verify it, so kafka_ssl_cafile must hold it;
    refused otherwise, naming the file. With SASL_SSL no client certificates are asked for (ssl.client.auth=none):
    the login says who calls; with SSL they are (_client_auth_props)."""
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return {}
    pem = certificate(settings)
    store, secret = pem.with_name("broker.p12"), pem.with_name("store.pass")
    if not (pem.exists() and store.exists() and secret.exists()):
        pem.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        for f in (pem, store, secret):
            f.unlink(missing_ok=True)
        host = settings.bind_host
        try:
            san = f"IP:{ipaddress.ip_address(host)}"
        except ValueError:
            san = f"DNS:{host}"
        password = secrets.token_urlsafe(24)
        env = {**os.environ, "MEDIAFM_KEYSTORE_PASS": password}  # never on a command line
        tool, common = _keytool(java), ["-keystore", str(store), "-storetype", "PKCS12", "-alias", "broker",
                                        "-storepass:env", "MEDIAFM_KEYSTORE_PASS"]
        for argv in ([tool, "-genkeypair", *common, "-keyalg", "RSA", "-keysize", "2048", "-validity", "3650",
                      "-dname", BROKER_SUBJECT, "-ext", f"SAN={san}"],
                     [tool, "-exportcert", *common, "-rfc", "-file", str(pem)]):
            r = subprocess.run(argv, capture_output=True, text=True, env=env)
            if r.returncode != 0:
                raise StackError(f"kafka: making the broker's TLS certificate failed: {(r.stdout + r.stderr)[-500:]}")
        secret.touch(mode=0o600)
        secret.write_text(password)
    cafile = settings.kafka_ssl_cafile
    try:
        holds = bool(cafile) and pem.read_text().strip() in Path(cafile).read_text(errors="replace")
    except OSError:
        holds = False
    fixes = [] if holds else [f"the local broker's certificate is {pem}, and kafka_ssl_cafile={cafile!r} does not "
                              f"hold it; set kafka_ssl_cafile={pem} (MEDIAFM_KAFKA_SSL_CAFILE) so clients can "
                              "verify the broker"]
    password = secret.read_text().strip()
    props = {"ssl.keystore.type": "PKCS12", "ssl.keystore.location": str(store), "ssl.keystore.password": password,
             "ssl.key.password": password, "ssl.truststore.type": "PEM", "ssl.truststore.location": str(pem),
             "ssl.client.auth": "none"}
    if settings.kafka_security_protocol == "SSL":  # no login: the client's certificate is who it is
        props.update(_client_auth_props(settings, fixes))
    if fixes:
        raise ConfigError(f"kafka_security_protocol={settings.kafka_security_protocol}: " + "; and ".join(fixes))
    return props


_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----")


def client_certificate(settings: Settings) -> tuple[Path, Path]:
    """The client certificate and its key (PEM) that `stack up` makes for its broker with SSL: what
    kafka_ssl_certfile and kafka_ssl_keyfile name for clients of that broker, unless they bring their own."""
    return _dir(settings) / "tls" / "client.pem", _dir(settings) / "tls" / "client.key"


def _admin_certificate(settings: Settings) -> tuple[Path, Path]:
    """With SSL and kafka_acls: the certificate and key (PEM) of ADMIN_SUBJECT, the super user that grants ACLs."""
    return _dir(settings) / "tls" / "admin.pem", _dir(settings) / "tls" / "admin.key"


def _make_certificate(pem: Path, key: Path, subject: str) -> None:
    """A self-signed certificate for `subject`, one attribute (`CN=...`) (openssl: RSA 2048, ten years, the key
    unencrypted and 0600), unless both files are there."""
    if pem.exists() and key.exists():
        return
    if not (tool := shutil.which("openssl")):
        raise MissingToolError("kafka: `openssl` not found; it makes the local broker's client certificates "
                               "(apt install openssl), or set kafka_ssl_certfile to one of your own")
    for f in (pem, key):
        f.unlink(missing_ok=True)
    key.touch(mode=0o600)
    r = subprocess.run([tool, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj",
                        f"/{subject}", "-keyout", str(key), "-out", str(pem)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise StackError(f"kafka: making the certificate of {subject} failed: {(r.stdout + r.stderr)[-500:]}")


def _client_auth_props(settings: Settings, fixes: list[str]) -> dict[str, str]:
    """SSL without SASL: every listener asks each client for a certificate (mutual TLS, ssl.client.auth=required),
    and trusts the broker's own and those in kafka_ssl_certfile. Without one the broker would let in anyone who
    reaches the port. Makes a client certificate (CN=mediafm local client) for kafka_ssl_certfile to name; the
    broker trusts whatever that setting names, so a client certificate of one's own works as well. With
    kafka_acls, the broker checks ACLs against each certificate's subject (Kafka's default principal builder), and
    its own certificate and ADMIN_SUBJECT's (made here, trusted, given to no client) are its super users. Appends to
    `fixes` what the settings lack."""
    pem, key = client_certificate(settings)
    _make_certificate(pem, key, "CN=mediafm local client")
    certfile = settings.kafka_ssl_certfile
    try:
        theirs = _CERTIFICATE.findall(Path(certfile).read_text(errors="replace")) if certfile else []
    except OSError:
        theirs = []
    if not theirs:
        fixes.append(f"the local broker asks every client for a certificate, and kafka_ssl_certfile={certfile!r} "
                     f"holds none; set kafka_ssl_certfile={pem} and kafka_ssl_keyfile={key} "
                     "(MEDIAFM_KAFKA_SSL_CERTFILE, MEDIAFM_KAFKA_SSL_KEYFILE), or name a client certificate of "
                     "your own")
    trusted = [certificate(settings).read_text().strip(), *theirs]
    props = {"ssl.client.auth": "required"}
    if settings.kafka_acls:
        admin, admin_key = _admin_certificate(settings)
        _make_certificate(admin, admin_key, ADMIN_SUBJECT)
        trusted.append(admin.read_text().strip())
        props.update(_authorizer_props([f"User:{BROKER_SUBJECT}", f"User:{ADMIN_SUBJECT}"]))
    trust = pem.with_name("trusted.pem")  # what the broker takes a client's certificate from
    trust.write_text("\n".join(trusted) + "\n")
    return {"ssl.truststore.location": str(trust), **props}


def _scram_user(settings: Settings) -> list[str]:
    """The storage tool's arguments that make the SCRAM user when the data dir is formatted ([] otherwise).
    The password is on that tool's command line for the second it runs. A user made so stays until the data
    is wiped (`mediafm stack down --wipe`)."""
    if not settings.kafka_security_protocol.startswith("SASL_") or settings.kafka_sasl_mechanism == "PLAIN":
        return []
    users = dict([_local_user(settings), _broker_user(settings)])
    return [arg for user, password in users.items()
            for arg in ("--add-scram", f"{settings.kafka_sasl_mechanism}=[name={user},password={password}]")]


def broker_admin(settings: Settings):
    """With kafka_acls: a kafka-python admin client as the broker's super user, the one that may change ACLs: with
    SASL logged in as the broker's own user, with SSL showing ADMIN_SUBJECT's certificate."""
    from kafka import KafkaAdminClient

    from mediafm.bus import kafka_python_options

    if settings.kafka_security_protocol == "SSL":
        pem, key = _admin_certificate(settings)
        return KafkaAdminClient(**kafka_python_options(replace(settings, kafka_ssl_certfile=str(pem),
                                                               kafka_ssl_keyfile=str(key))))
    me, mine = _broker_user(settings)
    return KafkaAdminClient(**{**kafka_python_options(settings), "sasl_plain_username": me,
                               "sasl_plain_password": mine})


def grant_acls(settings: Settings) -> int:
    """With kafka_acls: grant the pipeline's principal (kafka_security.principal: its SASL user, or its client
    certificate's subject) what the pipeline needs (mediafm.acls.pipeline_acls), as the broker's super user.
    Granting one that is there already changes nothing. Returns how many."""
    if not settings.kafka_acls:
        return 0
    from kafka.errors import KafkaError

    from mediafm.acls import pipeline_acls

    if not (whom := principal(settings)):
        raise StackError(f"kafka: cannot read the subject of kafka_ssl_certfile={settings.kafka_ssl_certfile!r} "
                         "with `openssl x509`, so cannot grant it the pipeline's ACLs (is openssl installed?)")
    acls = [a.to_kafka_python(whom) for a in pipeline_acls(settings)]
    admin = broker_admin(settings)
    try:
        failed = admin.create_acls(acls)["failed"]
    except KafkaError as e:
        raise StackError(f"kafka: granting the pipeline's ACLs failed ({e}); see "
                         f"{_dir(settings) / 'kafka.log'}") from None
    finally:
        admin.close()
    if failed:
        raise StackError(f"kafka: the broker refused to grant {failed[0][0]} ({failed[0][1]})")
    return len(acls)


def _write_config(settings: Settings, java: str) -> Path:
    if settings.bind_host in ("0.0.0.0", "::", "[::]", ""):  # Kafka refuses to start: "cannot use the nonroutable"
        raise ConfigError(f"bind_host={settings.bind_host!r}: the local broker tells its clients this address (its "
                          "advertised listener, its certificate), and Kafka refuses a wildcard there; give this "
                          "machine's address on the network to expose it to (e.g. 192.168.1.10), or keep 127.0.0.1")
    d = _dir(settings)
    d.mkdir(parents=True, exist_ok=True)
    h, p, c = settings.bind_host, settings.kafka_port, settings.kafka_controller_port
    proto = settings.kafka_security_protocol
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{h}:{c}",
        "listeners": f"{proto}://{h}:{p},CONTROLLER://{h}:{c}",
        "advertised.listeners": f"{proto}://{h}:{p}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": f"{proto}:{proto},CONTROLLER:{proto}",
        "inter.broker.listener.name": proto,
        **_sasl_props(settings),
        **_tls_props(settings, java),
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
    cfg.touch(mode=0o600)  # with SASL it holds the user's password (the broker's own login), with TLS the store's
    cfg.chmod(0o600)
    cfg.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    (d / "log4j.properties").write_text(_LOG4J)
    return cfg


def ready(settings: Settings, *, timeout_s: float = 2.0) -> bool:
    """True when the broker answers a metadata request listing itself. A probe: False once `timeout_s` has gone by
    without an answer (kafka-python's admin client waits 30 s for a first connection unless told otherwise)."""
    from kafka import KafkaAdminClient  # lazy: kafka-python is slow to import
    from kafka.errors import KafkaError

    from mediafm.bus import kafka_python_options

    try:
        admin = KafkaAdminClient(request_timeout_ms=int(timeout_s * 1000), bootstrap_timeout_ms=int(timeout_s * 1000),
                                 **kafka_python_options(settings))
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
        check_login(settings)  # ConfigError: a refused login says so, and a running broker is left running
        if ready(settings):
            return f"kafka already running (pid {svc.pid()}) on {settings.kafka_bootstrap}{_granted(settings)}"
        # Half-started or wedged: give it the normal start time, then replace it.
        try:
            wait_until(lambda: ready(settings), timeout_s=settings.start_timeout_s,
                       what="metadata", service=svc)
            return f"kafka already running (pid {svc.pid()}) on {settings.kafka_bootstrap}{_granted(settings)}"
        except StackError:
            svc.stop()
    java = _java()
    libs = install(settings)
    require_free_ports("kafka", settings.bind_host,
                       {"kafka_port": settings.kafka_port, "kafka_controller_port": settings.kafka_controller_port})
    cfg = _write_config(settings, java)
    cp = f"{libs}/*"
    data = data_dir(settings)
    made_with = _dir(settings) / "broker.user"  # whom the broker logs in as, written when its data is formatted
    scram = settings.kafka_security_protocol.startswith("SASL_") and settings.kafka_sasl_mechanism != "PLAIN"
    if (settings.kafka_acls and scram and (data / "meta.properties").exists()
            and not (made_with.exists() and made_with.read_text().strip() == BROKER_USER)):
        raise ConfigError(f"kafka_acls: the local broker's data ({data}) was made without the broker's own SCRAM "
                          "user; `mediafm stack down --wipe` (its topics are lost), then `stack up` again")
    if not (data / "meta.properties").exists():
        r = subprocess.run([java, "-cp", cp, f"-Dlog4j.configuration=file:{_dir(settings) / 'log4j.properties'}",
                            "kafka.tools.StorageTool", "format", f"--cluster-id={_cluster_id()}", "-c", str(cfg),
                            *_scram_user(settings)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise StackError(f"kafka: formatting {data} failed: {(r.stdout + r.stderr).strip()[-500:]}")
        if scram:
            made_with.write_text(_broker_user(settings)[0] + "\n")
    argv = [java, f"-Xmx{settings.kafka_heap}", f"-Xms{settings.kafka_heap}", "-XX:+UseG1GC",
            "-Djava.awt.headless=true", f"-Dlog4j.configuration=file:{_dir(settings) / 'log4j.properties'}",
            "-cp", cp, "kafka.Kafka", str(cfg)]
    pid = svc.start(argv)
    # a broker that refuses our login is never ready: check_login says that, not "not ready"
    start_and_wait(svc, lambda: ready(settings), timeout_s=settings.start_timeout_s, what="metadata",
                   explain=lambda: check_login(settings))
    return f"kafka started (pid {pid}) on {settings.kafka_bootstrap}{_granted(settings)}"


def _granted(settings: Settings) -> str:
    n = grant_acls(settings)
    return f"; ACLs on, {n} grants to {principal(settings)} (`mediafm acls` lists them)" if n else ""


def data_dir(settings: Settings) -> Path:
    """The broker's log (its topics)."""
    return _dir(settings) / "data"


def down(settings: Settings, *, wipe: bool = False, before_wipe=None) -> str:
    """Stop the broker; with `wipe`, delete its log, certificate and user once nothing listens on its port
    (`before_wipe()` first: what must go before the log does, the workers' tables)."""
    stopped = service(settings).stop()
    if wipe:
        if not port_is_free(settings.bind_host, settings.kafka_port):  # not deleted under a broker that runs
            raise StackError(f"a broker still listens on {settings.bind_host}:{settings.kafka_port} (not one this "
                             f"stack started, or it did not stop): stop it, then `mediafm stack down --wipe` again")
        if before_wipe is not None:
            before_wipe()
        wipe_dir(data_dir(settings))
        wipe_dir(certificate(settings).parent)
        for f in ("broker.user", "broker.pass"):  # the broker's own user went with the data
            (_dir(settings) / f).unlink(missing_ok=True)
    return ("kafka stopped" if stopped else "kafka was not running") + (" (data wiped)" if wipe else "")


def create_topics(settings: Settings, names: list[str], *, configs: dict[str, str] | None = None) -> list[str]:
    """Create the topics with Settings.partitions (and topic `configs`, e.g. retention.ms, for the ones
    created here); check existing ones agree.

    Returns the names that were created. Raises StackError if an existing topic
    has another partition count (faust would refuse to start on it).
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError, TopicAuthorizationFailedError

    from mediafm.bus import kafka_python_options
    from mediafm.kafka_security import denied

    check_login(settings)  # ConfigError naming the setting, not 30 s of retries
    admin = KafkaAdminClient(**kafka_python_options(settings))
    try:
        existing = set(admin.list_topics())  # with ACLs: those it may describe
        new = [n for n in names if n not in existing]
        if new:
            try:
                admin.create_topics([NewTopic(n, settings.partitions, 1, topic_configs=configs or {}) for n in new])
            except TopicAlreadyExistsError:
                pass  # another process raced us; the partition check below decides
            except TopicAuthorizationFailedError:
                raise denied(settings, f"creating topics {', '.join(new)}") from None
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
