"""Our kafka-python clients while the broker is away: they try again at least every second or so, and a readiness
probe answers within its timeout. Before, a client that had waited through a broker's restart backed off up to
30 s and came back long after the broker had (bench/live.py --kill-broker-at: the live publisher 23 s behind the
event; `mediafm stack up` 30 s to see a broker that was ready in 12)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from mediafm.bus import kafka_python_options
from mediafm.config import Settings, free_ports, replace
from mediafm.stack import kafka


def settings_at(port: int) -> Settings:
    return replace(Settings(), bind_host="127.0.0.1", kafka_port=port)


def attempts_against_a_broker_that_hangs_up(options: dict, want: int, deadline_s: float) -> list[float]:
    """time.monotonic() of each connection a kafka-python admin client opens to a listener that accepts and at once
    closes every connection (a broker that is not serving), until `want` have come or `deadline_s` has passed."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    seen: list[float] = []

    def client():
        try:
            KafkaAdminClient(**{**kafka_python_options(settings_at(port)), **options},
                             bootstrap_timeout_ms=int(deadline_s * 1000)).close()
        except KafkaError:
            pass  # it never bootstraps: nothing here serves

    t = threading.Thread(target=client, daemon=True)
    t.start()
    end = time.monotonic() + deadline_s
    try:
        while len(seen) < want and time.monotonic() < end:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            seen.append(time.monotonic())
            conn.close()
    finally:
        listener.close()
    return seen


def test_a_client_waiting_for_the_broker_tries_again_at_least_every_second_or_so():
    seen = attempts_against_a_broker_that_hangs_up({}, want=10, deadline_s=40)
    assert len(seen) == 10, f"{len(seen)} connection attempts in 40 s"
    gaps = [b - a for a, b in zip(seen, seen[1:], strict=False)]
    # kafka-python's own cap (30 s) lets the wait double on: gaps 0.06, 0.11, 0.21, 0.47, 0.86, 1.79, 3.7, 7.65 s
    # (measured with reconnect_backoff_max_ms=30000). Ours stops at 1 s (x1.2 jitter): 1.06-1.16 s measured.
    assert max(gaps) < 2.5, [round(g, 2) for g in gaps]


@pytest.mark.kafka
def test_the_readiness_probe_says_no_within_its_timeout_while_nothing_listens(kafka_stack):
    assert kafka.ready(kafka_stack, timeout_s=5.0) is True  # a broker that answers is seen (a probe that says no to all fails)
    (port,) = free_ports(1)
    t = time.monotonic()
    assert kafka.ready(settings_at(port), timeout_s=1.0) is False
    # kafka-python's admin client waits 30 s for a first connection unless told otherwise; `mediafm stack up`
    # probes every half second and must see a broker as soon as it answers
    assert time.monotonic() - t < 10


def test_a_send_to_a_topic_that_was_never_made_says_how_to_make_it(kafka_stack):
    """The local broker does not create topics on use: a publisher with a topic_prefix whose topics were never made
    waited for their metadata and was told only "is it running?", of a broker that was. Now the error also names
    the missing topics' command."""
    from kafka import KafkaProducer

    from mediafm.bus import send_and_wait
    from mediafm.errors import StackError

    p = KafkaProducer(max_block_ms=2000, **kafka_python_options(kafka_stack))
    try:
        with pytest.raises(StackError, match=r"did not take the test record within .*`mediafm topics`"):
            send_and_wait(kafka_stack, p, "the test record", [("never-made.titles", b"k", b"v")])
    finally:
        p.close()
