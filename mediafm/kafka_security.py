"""How every Kafka client of ours authenticates: one definition, for kafka-python (the tools, `stack`) and aiokafka
(the workers' own consumers, and Faust through `streams.runtime`), which take the same keyword names.

    KafkaProducer(bootstrap_servers=s.kafka_bootstrap, **client_security(s))

PLAINTEXT (the local stack's default, loopback only) needs nothing. SASL_PLAINTEXT, SASL_SSL and SSL take the
`kafka_*` settings; the SASL password is read from the environment variable that `kafka_sasl_password_env`
names when a client is made, so it is never a setting, a command-line argument or a line of a log.
"""

from __future__ import annotations

import os
import ssl

from mediafm.config import Settings
from mediafm.errors import ConfigError


def sasl_password(settings: Settings) -> str:
    """The SASL password from the environment; ConfigError naming the variable when it is unset or empty."""
    password = os.environ.get(settings.kafka_sasl_password_env, "")
    if not password:
        raise ConfigError(f"kafka_security_protocol={settings.kafka_security_protocol} and the password of Kafka user "
                          f"{settings.kafka_sasl_username!r} is not set: export {settings.kafka_sasl_password_env}=... "
                          "(or name another variable with kafka_sasl_password_env)")
    return password


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """Verifies the broker's certificate and host name, against kafka_ssl_cafile or the system's CAs."""
    try:
        return ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"kafka_ssl_cafile={settings.kafka_ssl_cafile!r} is not a readable CA bundle ({e}); "
                          "give the PEM file of the CA that signed the broker's certificate") from None


def client_security(settings: Settings) -> dict:
    """Keyword arguments for a kafka-python or aiokafka client; {} for PLAINTEXT."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    out: dict = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        out["ssl_context"] = ssl_context(settings)
    if protocol.startswith("SASL_"):
        out.update(sasl_mechanism=settings.kafka_sasl_mechanism, sasl_plain_username=settings.kafka_sasl_username,
                   sasl_plain_password=sasl_password(settings))
    return out
