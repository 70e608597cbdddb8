"""What the pipeline's Kafka user needs from a broker that checks ACLs, and nothing more: one definition, which
`mediafm acls` prints for a broker's operator and `mediafm stack up` grants on its own broker (kafka_acls).

    for acl in pipeline_acls(settings):
        print(acl.command("User:pipeline"))   # kafka-acls.sh --add --allow-principal User:pipeline ...

Every name the pipeline uses starts with topic_prefix: its topics (`<prefix>.titles`, ...: mediafm/topics.py), the
workers' consumer group (the Faust app id, `<prefix>`) and the topics Faust makes for itself (`<prefix>-...`: table
changelogs, the assignor's leader topic). So the grants are on names with those prefixes, and one pipeline's user
cannot touch another's (`mediafm2.titles` does not start with `mediafm.`; a prefix has no '.', config.py). One
overlap is left: Faust's topics are granted as `<prefix>-`, so pipelines `mediafm` and `mediafm-staging` on one
broker share the second's names; give pipelines that share a broker prefixes of which none is another's plus '-'.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass

from mediafm.config import Settings

TOPIC_OPERATIONS = ("READ", "WRITE", "CREATE")
"""On every topic of the pipeline's and of Faust's: read it, write it, make it (`mediafm topics`, `stack up`; Faust
makes its changelogs at start). READ and WRITE imply DESCRIBE in Kafka's ACLs: finding a topic needs no grant."""
PIPELINE_TOPIC_OPERATIONS = ("DESCRIBE_CONFIGS",)
"""On the pipeline's own topics only: read the fused topic's retention (streams/fused_source.check_retention)."""
GROUP_OPERATIONS = ("READ",)
"""On the workers' consumer group: join it, commit its offsets and read them back (the tools' `caught_up`); READ
implies DESCRIBE."""


@dataclass(frozen=True)
class Acl:
    """One grant: ALLOW `operation` on a resource (TOPIC or GROUP) named `name`, exactly (LITERAL) or every name
    starting with it (PREFIXED), from any host."""

    resource: str
    name: str
    pattern: str
    operation: str

    def command(self, principal: str) -> str:
        """The kafka-acls.sh line that grants it to `principal` (e.g. User:pipeline), quoted for a shell where it
        needs it (a certificate's subject: User:CN=pipeline,O=Example\\, Inc.)."""
        flag = {"TOPIC": "--topic", "GROUP": "--group"}[self.resource]
        op = "".join(w.capitalize() for w in self.operation.split("_"))  # DESCRIBE_CONFIGS -> DescribeConfigs
        return (f"kafka-acls.sh --bootstrap-server BROKER --command-config ADMIN.properties --add --allow-principal "
                f"{shlex.quote(principal)} --operation {op} {flag} '{self.name}' "
                f"--resource-pattern-type {self.pattern.lower()}")

    def to_kafka_python(self, principal: str):
        """The same grant as kafka-python's admin client takes it (KafkaAdminClient.create_acls)."""
        from kafka.admin import (
            ACL,
            ACLOperation,
            ACLPermissionType,
            ACLResourcePatternType,
            ResourcePattern,
            ResourceType,
        )

        return ACL(principal, "*", ACLOperation[self.operation], ACLPermissionType.ALLOW,
                   ResourcePattern(ResourceType[self.resource], self.name, ACLResourcePatternType[self.pattern]))


def pipeline_acls(settings: Settings) -> list[Acl]:
    """The grants the pipeline's user needs: its workers, `publish`, `sink`, `topics` and `export`."""
    p = settings.topic_prefix
    return ([Acl("TOPIC", f"{p}.", "PREFIXED", op) for op in TOPIC_OPERATIONS + PIPELINE_TOPIC_OPERATIONS]
            + [Acl("TOPIC", f"{p}-", "PREFIXED", op) for op in TOPIC_OPERATIONS]
            + [Acl("GROUP", p, "LITERAL", op) for op in GROUP_OPERATIONS])


def check_access(settings: Settings, *, retry_s: float = 30.0) -> None:
    """Ask the broker, as the pipeline's user, for what every worker needs before Faust starts, and raise
    ConfigError naming what it denies and what to grant. Asked with no side effect: the pipeline's topics (their
    metadata), reading them and Faust's own (a fetch of nothing), making Faust's leader topic
    (CreateTopics with validate_only) and the consumer group (its offsets, which DESCRIBE allows, then a heartbeat of
    no member, which READ allows: joining it needs READ). Without this a worker denied its group waits for ever,
    saying nothing (aiokafka's coordinator task dies with GroupAuthorizationFailedError, which Faust never reads),
    and one denied a read or a create crashes with a traceback. Writing cannot be asked without
    writing: a worker denied a write stops when it first sends (streams/runtime.py names the grant)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import (
        GroupAuthorizationFailedError,
        KafkaError,
        TopicAlreadyExistsError,
        TopicAuthorizationFailedError,
    )

    from mediafm.bus import kafka_python_options
    from mediafm.kafka_security import denied
    from mediafm.topics import Topics

    try:
        admin = KafkaAdminClient(**kafka_python_options(settings))
    except (KafkaError, OSError):  # gone again since the login: the worker's own clients wait for it
        return
    try:
        names = Topics.from_settings(settings)
        try:
            described = admin.describe_topics(names.all())
        except TopicAuthorizationFailedError:
            described = [{"name": n, "error_code": TopicAuthorizationFailedError.errno} for n in names.all()]
        refused = {t.get("name", t.get("topic")) for t in described
                   if t["error_code"] == TopicAuthorizationFailedError.errno}
        if refused := [n for n in names.all() if n in refused]:  # in the data path's order
            raise denied(settings, f"the topics {', '.join(refused)}")
        faust = sorted(t for t in admin.list_topics() if t.startswith(f"{settings.topic_prefix}-"))
        readable = [*names.all(), *faust]  # the workers read five of its own, the tools the rest
        if refused := [t for t in readable if t in _unreadable(settings, readable)]:
            raise denied(settings, f"reading {', '.join(refused)}")
        try:
            admin.create_topics([NewTopic(f"{settings.topic_prefix}-__assignor-__leader", 1, 1)], validate_only=True)
        except TopicAuthorizationFailedError:
            raise denied(settings, f"making Faust's topics ({settings.topic_prefix}-*: its tables' changelogs)") \
                from None
        except TopicAlreadyExistsError:
            pass  # allowed, and there
        deadline = time.monotonic() + retry_s
        while True:
            try:
                if hasattr(admin, "list_group_offsets"):  # kafka-python 3
                    admin.list_group_offsets({settings.topic_prefix: None})
                else:  # 2.x
                    admin.list_consumer_group_offsets(settings.topic_prefix)
            except GroupAuthorizationFailedError:
                raise denied(settings, f"the consumer group {settings.topic_prefix!r}") from None
            except KafkaError as e:  # a new broker makes its offsets topic at the first group asked for
                if not e.retriable or time.monotonic() > deadline:
                    return  # not a denial: the worker's own clients wait for it, or say what it is
                time.sleep(0.5)
                continue
            if _group_unreadable(settings):  # DESCRIBE alone passes the offsets, and a worker then waits for ever
                raise denied(settings, f"the consumer group {settings.topic_prefix!r} (reading it: joining it needs "
                                       "READ)")
            return
    except (KafkaError, OSError):  # not a denial (the broker went away meanwhile): left to the worker's clients
        return
    finally:
        admin.close()


def _unreadable(settings: Settings, topics: list[str]) -> set[str]:
    """The topics a fetch of partition 0 (nothing: no wait, at most 1 byte) is refused with
    TOPIC_AUTHORIZATION_FAILED. A fetch is how Kafka checks READ; a broker checks it before whether it leads the
    partition, so any broker can say."""
    from aiokafka.protocol.fetch import FetchRequest

    r = _ask(settings, FetchRequest(0, 0, 1, 0, [(t, [(0, 0, 1)]) for t in topics]))
    return set() if r is None else {topic for topic, partitions in r.topics
                                    if any(p[1] == TOPIC_AUTHORIZATION_FAILED for p in partitions)}


def _group_unreadable(settings: Settings) -> bool:
    """Whether a heartbeat to the consumer group from a member that is not in it is refused with
    GROUP_AUTHORIZATION_FAILED: a broker checks READ on the group first (JoinGroup needs the same), then answers
    UNKNOWN_MEMBER_ID (or that it is not the group's coordinator) and changes nothing."""
    from aiokafka.protocol.group import HeartbeatRequest

    r = _ask(settings, HeartbeatRequest(settings.topic_prefix, -1, "mediafm-access-check"))
    return r is not None and r.error_code == GROUP_AUTHORIZATION_FAILED


TOPIC_AUTHORIZATION_FAILED, GROUP_AUTHORIZATION_FAILED = 29, 30  # Kafka's error codes


def _ask(settings: Settings, request, *, timeout_s: float = 10.0):
    """`request`'s response from the first broker of kafka_bootstrap that answers it; None when none does."""
    import asyncio

    from aiokafka.conn import AIOKafkaConnection

    from mediafm.kafka_security import client_security, close_connection

    async def ask(host: str, port: int):
        conn = AIOKafkaConnection(host, port, request_timeout_ms=int(timeout_s * 1000), **client_security(settings))
        try:
            await asyncio.wait_for(conn.connect(), timeout_s)
        except BaseException:
            await close_connection(conn, wait=False)
            raise
        try:
            return await asyncio.wait_for(conn.send(request), timeout_s)
        finally:
            await close_connection(conn, wait=True)

    for address in settings.kafka_bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            return asyncio.run(ask(host.strip("[]"), int(port)))
        except Exception:  # noqa: BLE001 - not this broker: the next, or no verdict
            continue
    return None
