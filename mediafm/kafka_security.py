"""How every Kafka client of ours authenticates: one definition, for kafka-python (the tools, `stack`) and aiokafka
(the workers' own consumers, and Faust through `streams.runtime`), which take the same keyword names.

    KafkaProducer(bootstrap_servers=s.kafka_bootstrap, **client_security(s))

PLAINTEXT (the local stack's default, loopback only) needs nothing. SASL_PLAINTEXT, SASL_SSL and SSL take the
`kafka_*` settings; the SASL password is read from the environment variable that `kafka_sasl_password_env`
names when a client is made, so it is never a setting, a command-line argument or a line of a log.
"""

from __future__ import annotations

import contextlib
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
    """Verifies the broker's certificate and host name, against kafka_ssl_cafile or the system's CAs; shows the
    broker kafka_ssl_certfile when one is set (mutual TLS), its key read once here, its password (if the key is
    encrypted) from the variable kafka_ssl_key_password_env names."""
    try:
        ctx = ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"kafka_ssl_cafile={settings.kafka_ssl_cafile!r} is not a readable CA bundle ({e}); "
                          "give the PEM file of the CA that signed the broker's certificate") from None
    if not settings.kafka_ssl_certfile:
        return ctx
    env = settings.kafka_ssl_key_password_env
    asked = []

    def key_password() -> str:  # called only for an encrypted key; never OpenSSL's prompt on a terminal
        asked.append(True)
        return os.environ.get(env, "")

    files = f"kafka_ssl_certfile={settings.kafka_ssl_certfile!r}"
    if settings.kafka_ssl_keyfile:
        files += f" with kafka_ssl_keyfile={settings.kafka_ssl_keyfile!r}"
    try:
        ctx.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile or None, password=key_password)
    except OSError as e:  # ssl.SSLError is an OSError too
        if asked and not os.environ.get(env):
            why = f"its private key is encrypted and ${env} is not set: export {env}=... (or name another " \
                  "variable with kafka_ssl_key_password_env)"
        elif asked:
            why = f"its private key is encrypted and the password in ${env} does not open it"
        elif getattr(e, "reason", None) == "KEY_VALUES_MISMATCH":
            why = "the private key is not the one of that certificate: give the key it was made with"
        elif isinstance(e, ssl.SSLError):
            why = ("not a PEM certificate followed by its private key" if not settings.kafka_ssl_keyfile else
                   "not a PEM certificate and a PEM private key") + \
                  " (kafka_ssl_keyfile names the key when it is a file of its own)"
        else:
            why = f"not readable ({e.strerror or e})"
        raise ConfigError(f"{files}: {why}") from None
    return ctx


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


def certificate_subject(path: str) -> str | None:
    """The subject of the (first) certificate in PEM file `path`, written as RFC 2253 writes a name (`openssl x509
    -noout -subject -nameopt RFC2253`): what Kafka's default principal builder calls a client that shows it, after
    `User:`. None when openssl is missing or cannot read the file.

    The same as Kafka's for the usual attributes (CN, OU, O, L, ST, C, DC, UID, STREET); for others (emailAddress)
    openssl writes a name where Kafka writes the attribute's number, and a broker with ssl.principal.mapping.rules
    names its clients its own way: then give the principal yourself (`mediafm acls --principal`)."""
    import shutil
    import subprocess

    if not (tool := shutil.which("openssl")):
        return None
    r = subprocess.run([tool, "x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in", path],
                       capture_output=True, text=True)
    subject = r.stdout.strip().removeprefix("subject=").strip()
    return subject if r.returncode == 0 and subject else None


def principal(settings: Settings) -> str | None:
    """The principal a broker's ACLs name our clients by with its default principal builder: `User:<SASL user>`, or
    with SSL `User:<the client certificate's subject>` (certificate_subject; None when it cannot be read), or
    `User:ANONYMOUS` for a client that shows no certificate and does not log in."""
    if settings.kafka_security_protocol.startswith("SASL_"):
        return f"User:{settings.kafka_sasl_username}"
    if settings.kafka_security_protocol == "SSL" and settings.kafka_ssl_certfile:
        subject = certificate_subject(settings.kafka_ssl_certfile)
        return f"User:{subject}" if subject else None
    return "User:ANONYMOUS"


def who(settings: Settings) -> str:
    """Who the broker takes our clients for, in words (for errors about what it denies them)."""
    if settings.kafka_security_protocol.startswith("SASL_"):
        return f"user {settings.kafka_sasl_username!r}"
    if settings.kafka_security_protocol == "SSL" and settings.kafka_ssl_certfile:
        known = principal(settings)
        return f"the client certificate in {settings.kafka_ssl_certfile}" + (f" ({known})" if known else "")
    return "an anonymous client (User:ANONYMOUS)"


def denied(settings: Settings, what: str) -> ConfigError:
    """The error for a request the broker's ACLs refused: `what` was denied, and what to grant."""
    return ConfigError(f"Kafka at {settings.kafka_bootstrap} denies {who(settings)} {what}: its ACLs must grant what "
                       "`mediafm acls` lists (topics and the consumer group named by topic_prefix="
                       f"{settings.topic_prefix!r})")


def check_login(settings: Settings, *, timeout_s: float = 10.0) -> bool:
    """Log in to the first broker of kafka_bootstrap that answers, once, and say plainly when the broker refuses:
    ConfigError naming the user, the mechanism and what to fix. The clients themselves retry a refused login until
    their bootstrap times out (kafka-python: 30 s, then "Unable to bootstrap"), as if the broker were down. A broker
    that does not answer is not judged here (the caller waits for it, or wait_for_broker does); nor is anything but
    the login and TLS. A listener that hangs up and speaks the other transport (TLS or not), or a SASL listener that
    a PLAINTEXT client asks for metadata without a login, is named too: the clients would wait for it as if it were
    down.
    True when a broker answered and let us in (PLAINTEXT: answered a metadata request), False when none answered."""
    import asyncio

    from aiokafka.conn import AIOKafkaConnection  # lazy, as every Kafka client here
    from aiokafka.errors import (
        IllegalSaslStateError,
        KafkaConnectionError,
        SaslAuthenticationFailed,
        UnsupportedSaslMechanismError,
    )
    from aiokafka.protocol.metadata import MetadataRequest

    sec = client_security(settings)
    hung_up = (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError, KafkaConnectionError)

    class WantsLogin(Exception):
        """A PLAINTEXT client's metadata request hung up on after ApiVersions was answered: a SASL listener."""

    async def login(host: str, port: int) -> None:
        conn = AIOKafkaConnection(host, port, request_timeout_ms=int(timeout_s * 1000), **sec)
        made = True
        try:
            await asyncio.wait_for(conn.connect(), timeout_s)  # TLS, ApiVersions, then the SASL handshake and login
            if not sec:  # PLAINTEXT has no login: ask for metadata (no topics), which a SASL listener hangs up on
                try:
                    await asyncio.wait_for(conn.send(MetadataRequest([])), timeout_s)
                except hung_up:
                    raise WantsLogin from None
        except OSError:  # refused, unreachable, or no TLS session: no connection was made
            made = False
            raise
        finally:
            await close_connection(conn, wait=made)

    who = f"user {settings.kafka_sasl_username!r} with {settings.kafka_sasl_mechanism}"
    for address in settings.kafka_bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        host = host.strip("[]")  # [::1]:9092
        try:
            try:
                asyncio.run(login(host, int(port)))
            except WantsLogin:  # once more: a broker stopping between the two requests would hang up too
                asyncio.run(login(host, int(port)))
            return True
        except WantsLogin:
            raise ConfigError(f"Kafka at {address} answers only after a SASL login, and kafka_security_protocol="
                              "PLAINTEXT: set it to SASL_PLAINTEXT (or SASL_SSL, what that listener is) with "
                              "kafka_sasl_mechanism, kafka_sasl_username and the password in the environment "
                              "variable kafka_sasl_password_env names, or point kafka_servers at the broker's "
                              "PLAINTEXT listener") from None
        except SaslAuthenticationFailed:
            raise ConfigError(f"Kafka at {address} refused the login of {who}: check the password in "
                              f"${settings.kafka_sasl_password_env} and kafka_sasl_username (the broker's log says "
                              "why); the local broker keeps the password its data was made with until "
                              "`mediafm stack down --wipe`") from None
        except (UnsupportedSaslMechanismError, IllegalSaslStateError) as e:
            raise ConfigError(f"Kafka at {address} does not take the login of {who} ({type(e).__name__}): set "
                              "kafka_sasl_mechanism to one the broker enables (sasl.enabled.mechanisms), and "
                              "kafka_security_protocol to what its listener speaks") from None
        except ssl.SSLCertVerificationError as e:
            raise ConfigError(f"the TLS certificate of Kafka at {address} does not verify against "
                              f"{settings.kafka_ssl_cafile or 'the system CAs'} ({e.verify_message}): set "
                              "kafka_ssl_cafile to the PEM file of the CA that signed it") from None
        except ssl.SSLError as e:
            raise ConfigError(f"no TLS session with Kafka at {address} ({e.reason or e}): is that listener "
                              f"{settings.kafka_security_protocol}? Set kafka_security_protocol to what it "
                              "speaks") from None
        except Exception as e:  # down, slow or starting (connection refused, timeouts): the clients wait for it
            if alert := _certificate_alert(e):  # the broker hung up on our certificate, or on our lack of one
                if not settings.kafka_ssl_certfile:
                    raise ConfigError(f"Kafka at {address} asks for a client certificate (mutual TLS; it sent "
                                      f"{alert}), and kafka_ssl_certfile is empty: set kafka_ssl_certfile and "
                                      "kafka_ssl_keyfile to a certificate the broker trusts and its key") from None
                raise ConfigError(f"Kafka at {address} does not accept the client certificate in kafka_ssl_certfile="
                                  f"{settings.kafka_ssl_certfile!r} (it sent {alert}): give one signed by a CA in the "
                                  "broker's truststore, or have its CA added there") from None
            # A listener that took the connection and hung up may speak the other transport (TLS at a plain
            # listener, or the reverse): the clients would retry it as if it were down.
            if isinstance(e, hung_up) and (wrong := _other_protocol(settings, host, int(port), timeout_s)):
                raise ConfigError(f"Kafka at {address} {wrong}") from None
            continue
    return False


def _certificate_alert(e: BaseException) -> str | None:
    """The TLS alert about a client certificate behind a closed connection (aiokafka raises KafkaConnectionError
    from the ssl.SSLError), e.g. 'SSLV3_ALERT_BAD_CERTIFICATE' for none where one is required; None otherwise."""
    while e is not None:
        reason = getattr(e, "reason", None) if isinstance(e, ssl.SSLError) else None
        if reason and "ALERT" in reason and ("CERTIFICATE" in reason or "UNKNOWN_CA" in reason):
            return reason
        e = e.__cause__ or e.__context__
    return None


def wait_for_broker(settings: Settings, say, *, every_s: float = 2.0, say_every_s: float = 30.0) -> float:
    """Return once a broker of kafka_bootstrap answers and lets us in (check_login), trying every `every_s`; `say`
    gets a line for people when none answers, and again every `say_every_s` while none does. Returns the seconds
    waited. A refused login is a ConfigError at once: a setting to fix, not a broker to wait for.

    For what must not start without a broker: Faust's worker crashes at start when its producer cannot bootstrap
    (aiokafka: "Unable to bootstrap from ..."), where it waits out a broker lost later on. A worker started
    beside a broker still booting, or started again by its supervisor during an outage, waits here instead."""
    import time

    start = time.monotonic()
    said = None
    while not check_login(settings):
        now = time.monotonic()
        if said is None or now - said >= say_every_s:
            say(f"no Kafka broker answers at {settings.kafka_bootstrap} (waited {now - start:.0f} s); waiting for "
                f"it, trying every {every_s:g} s. Is it running (`mediafm stack status`), and is kafka_servers "
                "where it listens?")
            said = now
        time.sleep(every_s)
    return time.monotonic() - start


async def close_connection(conn, *, wait: bool) -> None:
    """Close an aiokafka connection (its create_conn would leave one that failed open). Closing a connection that
    was made takes a round trip (TLS's close_notify): wait for it, at most 1 s, before asyncio.run closes the loop
    under it; one never made has nothing to wait for (its future would not finish)."""
    import asyncio

    closed = conn.close()
    if wait and closed is not None:
        await asyncio.wait({closed}, timeout=1.0)


def _other_protocol(settings: Settings, host: str, port: int, timeout_s: float) -> str | None:
    """What to say when the listener at host:port speaks the other transport than kafka_security_protocol's:
    a client with TLS at a plain listener (it answers a Kafka request without TLS), or a client without TLS at a
    TLS listener (it completes a TLS handshake; its certificate is not checked here, only what it speaks). None
    when it answers neither: down, starting, or no Kafka."""
    import asyncio

    from aiokafka.conn import AIOKafkaConnection

    async def speaks_plain() -> bool:  # a Kafka ApiVersions round trip, which a SASL listener answers before login
        conn = AIOKafkaConnection(host, port, request_timeout_ms=int(timeout_s * 1000))
        try:
            await asyncio.wait_for(conn.connect(), timeout_s)
        except Exception:
            await close_connection(conn, wait=False)
            return False
        await close_connection(conn, wait=True)
        return True

    async def speaks_tls() -> bool:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ctx), timeout_s)
        except Exception:
            return False
        writer.close()
        with contextlib.suppress(Exception):  # TLS's close_notify: at most 1 s, then the loop closes it
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        return True

    protocol = settings.kafka_security_protocol
    if protocol.endswith("SSL"):
        if asyncio.run(speaks_plain()):
            return (f"speaks no TLS (it answered a Kafka request in plain text), and kafka_security_protocol="
                    f"{protocol}: set it to {'SASL_PLAINTEXT' if protocol == 'SASL_SSL' else 'PLAINTEXT'} (or "
                    "what that listener is), or point kafka_servers at the broker's TLS listener")
    elif asyncio.run(speaks_tls()):
        fix = "SASL_SSL" if protocol == "SASL_PLAINTEXT" else "SSL or SASL_SSL"
        return (f"speaks TLS, and kafka_security_protocol={protocol}: set it to {fix} (what that listener is) with "
                "kafka_ssl_cafile, or point kafka_servers at the broker's plain listener")
    return None
