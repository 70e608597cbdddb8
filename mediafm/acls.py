"""What the pipeline's Kafka user needs from a broker that checks ACLs, and nothing more: one definition, which
`mediafm acls` prints for a broker's operator and `mediafm stack up` grants on its own broker (kafka_acls).

    for acl in pipeline_acls(settings):
        print(acl.command("User:pipeline"))   # kafka-acls.sh --add --allow-principal User:pipeline ...

Every name the pipeline uses starts with topic_prefix: its topics (`<prefix>.titles`, ...: mediafm/topics.py), the
workers' consumer group (the Faust app id, `<prefix>`) and the topics Faust makes for itself (`<prefix>-...`: table
changelogs, the assignor's leader topic). So the grants are on names with those prefixes, and one pipeline's user
cannot touch another's (`mediafm2.titles` does not start with `mediafm.`).
"""

from __future__ import annotations

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
        """The kafka-acls.sh line that grants it to `principal` (e.g. User:pipeline)."""
        flag = {"TOPIC": "--topic", "GROUP": "--group"}[self.resource]
        op = "".join(w.capitalize() for w in self.operation.split("_"))  # DESCRIBE_CONFIGS -> DescribeConfigs
        return (f"kafka-acls.sh --bootstrap-server BROKER --command-config ADMIN.properties --add --allow-principal "
                f"{principal} --operation {op} {flag} '{self.name}' --resource-pattern-type {self.pattern.lower()}")

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
    """Ask the broker, as the pipeline's user, for what every worker needs before Faust starts: the pipeline's
    topics and its consumer group. ConfigError naming what is denied and what to grant. Without it a worker the
    broker denies its group waits for ever, saying nothing (aiokafka's coordinator task dies with
    GroupAuthorizationFailedError, which Faust never reads). What it asks (metadata, the group's offsets) needs
    DESCRIBE, which READ and WRITE imply, so a topic or group granted DESCRIBE alone passes here and is not served."""
    from kafka import KafkaAdminClient
    from kafka.errors import GroupAuthorizationFailedError, KafkaError, TopicAuthorizationFailedError

    from mediafm.bus import kafka_python_options
    from mediafm.kafka_security import denied
    from mediafm.topics import Topics

    try:
        admin = KafkaAdminClient(**kafka_python_options(settings))
    except (KafkaError, OSError):  # gone again since the login: the worker's own clients wait for it
        return
    try:
        names = Topics.from_settings(settings).all()
        try:
            described = admin.describe_topics(names)
        except TopicAuthorizationFailedError:
            described = [{"name": n, "error_code": TopicAuthorizationFailedError.errno} for n in names]
        refused = {t.get("name", t.get("topic")) for t in described
                   if t["error_code"] == TopicAuthorizationFailedError.errno}
        refused = [n for n in names if n in refused]  # in the data path's order
        if refused:
            raise denied(settings, f"the topics {', '.join(refused)}")
        deadline = time.monotonic() + retry_s
        while True:
            try:
                if hasattr(admin, "list_group_offsets"):  # kafka-python 3
                    admin.list_group_offsets({settings.topic_prefix: None})
                else:  # 2.x
                    admin.list_consumer_group_offsets(settings.topic_prefix)
                return
            except GroupAuthorizationFailedError:
                raise denied(settings, f"the consumer group {settings.topic_prefix!r}") from None
            except KafkaError as e:  # a new broker makes its offsets topic at the first group asked for
                if not e.retriable or time.monotonic() > deadline:
                    return  # not a denial: the worker's own clients wait for it, or say what it is
                time.sleep(0.5)
    except (KafkaError, OSError):  # not a denial (the broker went away meanwhile): left to the worker's clients
        return
    finally:
        admin.close()
