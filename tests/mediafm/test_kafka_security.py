"""The broker security settings: checked when loaded, turned into the same keywords for every client, the
password read from the environment only (tests/streams/test_kafka_sasl.py runs them on a real SASL broker)."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest
from conftest import free_port, self_signed

from mediafm.config import Settings, replace
from mediafm.errors import ConfigError
from mediafm.kafka_security import check_login, client_security
from mediafm.stack import kafka
from mediafm.topics import Topics
from streams.runtime import broker_credentials

SASL = dict(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="pipeline",
            kafka_sasl_password_env="MEDIAFM_TEST_PW")


def test_plaintext_needs_nothing(tmp_path):
    s = Settings(state_dir=tmp_path)
    assert client_security(s) == {} and broker_credentials(s) is None
    tls = Settings(state_dir=tmp_path, kafka_security_protocol="SSL")  # the same settings but the protocol
    assert client_security(tls)["security_protocol"] == "SSL" and isinstance(broker_credentials(tls),
                                                                             faust.SSLCredentials)


@pytest.mark.parametrize("changes, message", [
    (dict(kafka_security_protocol="SASL"), "choose one of PLAINTEXT, SASL_PLAINTEXT, SASL_SSL, SSL"),
    (dict(kafka_security_protocol="SASL_SSL"), "needs kafka_sasl_username"),
    (dict(kafka_acls=True), "kafka_acls with kafka_security_protocol=PLAINTEXT: .* set SASL_PLAINTEXT, SASL_SSL or SSL"),
    (dict(kafka_ssl_certfile="client.pem"), "are for TLS, and kafka_security_protocol=PLAINTEXT: set it to SSL"),
    (dict(kafka_security_protocol="SSL", kafka_ssl_keyfile="client.key"), "without kafka_ssl_certfile"),
    ({**SASL, "kafka_sasl_mechanism": "GSSAPI"}, "choose one of SCRAM-SHA-512, SCRAM-SHA-256, PLAIN"),
])
def test_bad_settings_are_refused_when_loaded(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        Settings(state_dir=tmp_path, **changes)


def test_sasl_reads_the_password_from_the_variable_named(tmp_path, monkeypatch):
    s = Settings(state_dir=tmp_path, **SASL)
    monkeypatch.delenv("MEDIAFM_TEST_PW", raising=False)
    with pytest.raises(ConfigError, match="export MEDIAFM_TEST_PW="):
        client_security(s)
    monkeypatch.setenv("MEDIAFM_TEST_PW", "hunter2-hunter2")
    assert client_security(s) == dict(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
                                      sasl_plain_username="pipeline", sasl_plain_password="hunter2-hunter2")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.to_env())  # never a setting
    creds = broker_credentials(s)
    assert isinstance(creds, faust.SASLCredentials) and creds.protocol.value == "SASL_PLAINTEXT"
    assert creds.mechanism.value == "SCRAM-SHA-512" and "hunter2" not in repr(creds)


def test_tls_verifies_the_broker_against_the_ca_given(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDIAFM_TEST_PW", "hunter2-hunter2")
    s = Settings(state_dir=tmp_path, **{**SASL, "kafka_security_protocol": "SASL_SSL"})
    ctx = client_security(s)["ssl_context"]
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert broker_credentials(s).protocol.value == "SASL_SSL"
    tls = Settings(state_dir=tmp_path, kafka_security_protocol="SSL", kafka_ssl_cafile=str(tmp_path / "none.pem"))
    with pytest.raises(ConfigError, match="not a readable CA bundle"):
        client_security(tls)


def test_tls_shows_the_broker_a_client_certificate_when_one_is_set(tmp_path, monkeypatch):
    """kafka_ssl_certfile and its key go into the one SSL context every client (kafka-python, aiokafka, Faust)
    takes; each way the files can be wrong is named, and an encrypted key's password comes from the environment."""
    pem, key = self_signed(tmp_path, "client")
    s = Settings(state_dir=tmp_path, kafka_security_protocol="SSL", kafka_ssl_certfile=pem, kafka_ssl_keyfile=key)
    ctx = client_security(s)["ssl_context"]
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert broker_credentials(s).context is not None
    both = tmp_path / "both.pem"  # the certificate followed by its key, in one file
    both.write_text(Path(pem).read_text() + Path(key).read_text())
    client_security(Settings(state_dir=tmp_path, kafka_security_protocol="SSL", kafka_ssl_certfile=str(both)))

    other = self_signed(tmp_path / "other", "client")
    wrong = {
        "the private key is not the one of that certificate": dict(kafka_ssl_certfile=pem, kafka_ssl_keyfile=other[1]),
        "not a PEM certificate followed by its private key": dict(kafka_ssl_certfile=pem),
        "not a PEM certificate and a PEM private key": dict(kafka_ssl_certfile=pem, kafka_ssl_keyfile=pem),
        "missing.pem': not readable": dict(kafka_ssl_certfile=str(tmp_path / "missing.pem")),
    }
    for message, changes in wrong.items():
        with pytest.raises(ConfigError, match=message):
            client_security(Settings(state_dir=tmp_path, kafka_security_protocol="SSL", **changes))

    pem, key = self_signed(tmp_path / "enc", "client", password="open-sesame")
    s = Settings(state_dir=tmp_path, kafka_security_protocol="SSL", kafka_ssl_certfile=pem, kafka_ssl_keyfile=key,
                 kafka_ssl_key_password_env="MEDIAFM_TEST_KEY_PW")
    monkeypatch.delenv("MEDIAFM_TEST_KEY_PW", raising=False)  # never OpenSSL's prompt on the terminal
    with pytest.raises(ConfigError, match="is encrypted and \\$MEDIAFM_TEST_KEY_PW is not set: export"):
        client_security(s)
    monkeypatch.setenv("MEDIAFM_TEST_KEY_PW", "not-open-sesame")
    with pytest.raises(ConfigError, match="the password in \\$MEDIAFM_TEST_KEY_PW does not open it") as e:
        client_security(s)
    assert "open-sesame" not in str(e.value)
    monkeypatch.setenv("MEDIAFM_TEST_KEY_PW", "open-sesame")
    assert client_security(s)["ssl_context"] is not None
    assert "open-sesame" not in repr(s) and "open-sesame" not in str(s.to_env())


def test_check_login_judges_only_a_broker_that_answers(tmp_path, monkeypatch):
    """Nobody listening is not a wrong setting (the clients wait for the broker), and check_login goes on to the
    next address; a listener that answers but is no broker (it reads, then hangs up) is not judged either, with or
    without a login to check. A broker that refuses, or speaks the other transport, is judged on real brokers:
    tests/streams/test_kafka_sasl.py and test_kafka_tls.py."""
    import socket
    import threading

    monkeypatch.setenv("MEDIAFM_TEST_PW", "hunter2-hunter2")
    heard = []
    with socket.create_server(("127.0.0.1", 0)) as server:  # answers, then hangs up: not a Kafka broker
        server.settimeout(15)

        def serve() -> None:  # every connection until the test closes the server
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn:
                    heard.append(conn.recv(64))  # b"" from a client that only connected and left

        threading.Thread(target=serve, daemon=True).start()
        listener, nobody = f"127.0.0.1:{server.getsockname()[1]}", f"127.0.0.1:{free_port()}"
        for security in ({}, SASL):  # PLAINTEXT asks for ApiVersions as a login does
            heard.clear()
            assert check_login(Settings(state_dir=tmp_path, kafka_servers=f"{nobody},{listener}", **security),
                               timeout_s=5) is False
            # the second address got a Kafka ApiVersions request (api key 18), then, having hung up on it, a TLS
            # handshake (a record of type 22) to see whether it speaks TLS
            assert [h[4:6] for h in heard[:1]] + [h[:1] for h in heard[1:]] == [b"\x00\x12", b"\x16"], heard
    assert check_login(Settings(state_dir=tmp_path, kafka_servers="nowhere.invalid:9092,[::1]:1", **SASL)) is False


@pytest.mark.parametrize("user, password, message", [
    ("pipe line", "hunter2-hunter2", "user name"),
    ("pipeline", 'with"quote', "password"),
    ("pipeline", "a,b=c]xxxxx", "password"),
    ("pipeline", "short", "password"),
])
def test_the_local_broker_refuses_what_its_files_cannot_hold(tmp_path, monkeypatch, user, password, message):
    monkeypatch.setenv("MEDIAFM_TEST_PW", password)
    s = Settings(state_dir=tmp_path, **{**SASL, "kafka_sasl_username": user})
    with pytest.raises(ConfigError, match=message) as e:
        kafka._write_config(s, "java")
    assert password not in str(e.value)


def test_the_local_broker_serves_sasl_on_every_listener_and_keeps_its_file_private(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDIAFM_TEST_PW", "hunter2-hunter2")
    cfg = kafka._write_config(Settings(state_dir=tmp_path, **SASL), "java")  # no TLS: java's keytool not needed
    props = dict(line.split("=", 1) for line in cfg.read_text().splitlines())
    assert props["listener.security.protocol.map"] == "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512" and props["listeners"].startswith("SASL_PLAINTEXT://")
    assert cfg.stat().st_mode & 0o777 == 0o600
    assert not any(k.startswith("ssl.") for k in props)


def test_with_acls_the_local_broker_logs_in_as_its_own_super_user(tmp_path, monkeypatch):
    """kafka_acls: the authorizer denies what is not granted, and the broker's own user (a password of its own,
    0600) is its one super user, so the pipeline's user gets only its grants; both SCRAM users are made when the
    data is formatted, and data formatted without the broker's user is refused, naming the fix."""
    monkeypatch.setenv("MEDIAFM_TEST_PW", "hunter2-hunter2")
    s = Settings(state_dir=tmp_path, **SASL, kafka_acls=True)
    props = dict(line.split("=", 1) for line in kafka._write_config(s, "java").read_text().splitlines())
    secret = tmp_path / "kafka" / "broker.pass"
    mine = secret.read_text()
    assert secret.stat().st_mode & 0o777 == 0o600 and len(mine) >= 24 and mine != "hunter2-hunter2"
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert props["super.users"] == f"User:{kafka.BROKER_USER}" and props["allow.everyone.if.no.acl.found"] == "false"
    assert f'username="{kafka.BROKER_USER}" password="{mine}"' in props[
        "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config"]
    assert "pipeline" not in props["listener.name.controller.plain.sasl.jaas.config"]
    users = kafka._scram_user(s)
    assert users[::2] == ["--add-scram"] * 2 and {u.split(",")[0] for u in users[1::2]} == {
        "SCRAM-SHA-512=[name=pipeline", f"SCRAM-SHA-512=[name={kafka.BROKER_USER}"}
    # without ACLs the broker logs in as the one user, as before, and checks nothing
    plain = dict(line.split("=", 1) for line in kafka._write_config(Settings(state_dir=tmp_path / "off", **SASL),
                                                                      "java").read_text().splitlines())
    assert "authorizer.class.name" not in plain and 'username="pipeline"' in plain[
        "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config"]
    formatted = tmp_path / "kafka" / "data" / "meta.properties"  # as if formatted before kafka_acls was set
    formatted.parent.mkdir(parents=True)
    formatted.write_text("")
    monkeypatch.setattr(kafka, "install", lambda settings: tmp_path)
    monkeypatch.setattr(kafka, "_java", lambda: "java")
    with pytest.raises(ConfigError, match="made without the broker's own SCRAM user; `mediafm stack down --wipe`"):
        kafka.up(replace(s, kafka_port=free_port(), kafka_controller_port=free_port()))


def test_with_acls_and_mutual_tls_the_broker_and_its_admin_certificate_are_the_super_users(tmp_path, capsys,
                                                                                           monkeypatch):
    """SSL with kafka_acls: no logins, so the broker's ACLs name each client by its certificate's subject. The
    broker's own certificate and an admin certificate `stack up` keeps for granting (trusted, 0600 key, given to no
    client) are the super users; the pipeline's certificate gets only its grants, named by its subject as RFC 2253
    writes it (Kafka's default principal builder), commas in a value escaped."""
    from mediafm.kafka_security import certificate_subject, principal, who

    pem, key = (Path(f) for f in self_signed(tmp_path, "mine", subject="/C=NL/O=Example, Inc./CN=pipeline"))
    s = Settings(state_dir=tmp_path / "state", kafka_security_protocol="SSL", kafka_ssl_certfile=str(pem),
                 kafka_ssl_keyfile=str(key), kafka_acls=True)
    assert certificate_subject(str(pem)) == r"CN=pipeline,O=Example\, Inc.,C=NL"
    assert principal(s) == r"User:CN=pipeline,O=Example\, Inc.,C=NL"
    assert who(s) == rf"the client certificate in {pem} (User:CN=pipeline,O=Example\, Inc.,C=NL)"
    assert certificate_subject(str(key)) is None  # not a certificate: no principal, and grant_acls says so
    for name, value in (("SECURITY_PROTOCOL", "SSL"), ("SSL_CERTFILE", str(pem)), ("SSL_KEYFILE", str(key))):
        monkeypatch.setenv(f"MEDIAFM_KAFKA_{name}", value)
    from mediafm.cli import main

    assert main(["acls"]) == 0  # `mediafm acls` grants to that subject unless told another, quoted for the shell
    assert r"--allow-principal 'User:CN=pipeline,O=Example\, Inc.,C=NL' --operation" in capsys.readouterr().out
    tls = s.state_dir / "kafka" / "tls"
    tls.mkdir(parents=True)
    (tls / "broker.pem").write_text("-----BEGIN CERTIFICATE-----\nbroker\n-----END CERTIFICATE-----\n")
    props = kafka._client_auth_props(s, fixes := [])
    assert not fixes and props["ssl.client.auth"] == "required"
    assert props["authorizer.class.name"].endswith("StandardAuthorizer") and props[
        "allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == f"User:{kafka.BROKER_SUBJECT};User:{kafka.ADMIN_SUBJECT}"
    admin, admin_key = kafka._admin_certificate(s)
    assert certificate_subject(str(admin)) == kafka.ADMIN_SUBJECT and admin_key.stat().st_mode & 0o777 == 0o600
    trusted = Path(props["ssl.truststore.location"]).read_text()
    assert "broker" in trusted and pem.read_text().strip() in trusted and admin.read_text().strip() in trusted
    client, _ = kafka.client_certificate(s)
    assert client.read_text().strip() not in trusted  # ours was named instead of the one stack up made
    off = kafka._client_auth_props(replace(s, kafka_acls=False), [])  # no ACLs: no authorizer, no admin in trust
    assert "authorizer.class.name" not in off and admin.read_text().strip() not in Path(
        off["ssl.truststore.location"]).read_text()


def test_the_acls_are_on_the_pipelines_names_only(tmp_path, capsys, monkeypatch):
    from kafka.admin import ACLPermissionType, ResourceType

    from mediafm.acls import pipeline_acls
    from mediafm.cli import main

    s = Settings(state_dir=tmp_path, topic_prefix="prod")
    acls = pipeline_acls(s)
    assert {(a.resource, a.name, a.pattern) for a in acls} == {
        ("TOPIC", "prod.", "PREFIXED"), ("TOPIC", "prod-", "PREFIXED"), ("GROUP", "prod", "LITERAL")}
    topics = Topics.from_settings(s).all()
    assert all(any(t.startswith(a.name) for a in acls if a.resource == "TOPIC") for t in topics)
    assert not any(a.operation in ("ALL", "ALTER", "DELETE", "ALTER_CONFIGS") for a in acls)  # nothing to spare
    granted = acls[0].to_kafka_python("User:pipeline")
    assert granted.permission_type == ACLPermissionType.ALLOW and granted.resource_pattern.resource_type == \
        ResourceType.TOPIC and granted.host == "*"

    monkeypatch.setenv("MEDIAFM_TOPIC_PREFIX", "prod")
    assert main(["acls", "--principal", "User:CN=pipeline"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len(lines) == len(acls) and all("--allow-principal User:CN=pipeline " in x for x in lines)
    assert "--operation DescribeConfigs --topic 'prod.' --resource-pattern-type prefixed" in "\n".join(lines)
    assert main(["acls"]) == 2 and "Give --principal" in capsys.readouterr().err  # PLAINTEXT: nobody to name


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_the_local_broker_with_tls_makes_its_certificate_and_asks_clients_to_trust_it(tmp_path, monkeypatch,
                                                                                      protocol):
    monkeypatch.setenv("MEDIAFM_TEST_PW", "hunter2-hunter2")
    s = Settings(state_dir=tmp_path, **{**SASL, "kafka_security_protocol": protocol})
    pem = kafka.certificate(s)
    client, key = kafka.client_certificate(s)
    with pytest.raises(ConfigError, match=f"set kafka_ssl_cafile={pem}") as e:  # clients could not verify it
        kafka._write_config(s, kafka._java())
    # SSL has no login: the broker asks each client for a certificate, and has made one to name
    assert (f"set kafka_ssl_certfile={client} and kafka_ssl_keyfile={key}" in str(e.value)) == (protocol == "SSL")
    assert client.exists() == key.exists() == (protocol == "SSL")
    made = pem.read_text()
    assert made.startswith("-----BEGIN CERTIFICATE-----")
    assert (pem.parent / "store.pass").stat().st_mode & 0o777 == 0o600 and pem.parent.stat().st_mode & 0o777 == 0o700
    bundle = tmp_path / "bundle.pem"  # a CA bundle that holds it among others is as good
    bundle.write_text("# other CAs\n" + made + "\n")
    files = dict(kafka_ssl_certfile=str(client), kafka_ssl_keyfile=str(key)) if protocol == "SSL" else {}
    cfg = kafka._write_config(Settings(state_dir=tmp_path, **{**SASL, "kafka_security_protocol": protocol,
                                                             "kafka_ssl_cafile": str(bundle), **files}), kafka._java())
    assert pem.read_text() == made  # made once, not again at every start
    props = dict(line.split("=", 1) for line in cfg.read_text().splitlines())
    assert props["listener.security.protocol.map"] == f"{protocol}:{protocol},CONTROLLER:{protocol}"
    assert props["ssl.keystore.type"] == "PKCS12"
    assert props["ssl.keystore.password"] == (pem.parent / "store.pass").read_text()
    assert ("sasl.enabled.mechanisms" in props) == protocol.startswith("SASL_")
    if protocol == "SSL":  # trusts itself (its own connections) and the client's certificate, and asks for one
        assert props["ssl.client.auth"] == "required" and key.stat().st_mode & 0o777 == 0o600
        assert Path(props["ssl.truststore.location"]).read_text() == made.strip() + "\n" + client.read_text().strip() + "\n"
    else:
        assert props["ssl.client.auth"] == "none" and props["ssl.truststore.location"] == str(pem)
    kafka.down(s, wipe=True)  # a wiped broker gets a new certificate
    assert not pem.exists() and not client.exists()
