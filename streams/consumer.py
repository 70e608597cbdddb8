"""The Kafka consumer of every worker: Faust's, except that a message it skipped is never committed.

Faust (0.15, faust/streams.py) skips a message that reaches an agent while the app's flow is stopped (a
rebalance under way) or that was fetched under an older consumer generation, and then *acknowledges* it
like a processed one, so that the lag does not grow. Once acknowledged, its offset is committed with the
next commit. Faust seeks to the committed offsets after every rebalance to fetch the skipped messages
again; when that commit lands first, the seek starts past them and they are never processed. Between
a rebalance's assignment and its seek Faust does not know the committed offset and commits whatever run
of offsets it holds acknowledged. bench/catalog.py with 2 workers lost 5 fused shots of a partition
this way when the second worker joined: committed, never in a table, the title never finished.

Here an acknowledgement counts towards a commit only if it comes while the app's flow is running and
for a message of the current generation. Any other is a message that was skipped, or processed under
the old assignment just before it was taken away. It is dropped: the message is fetched again after
the seek, by this worker or by the partition's new owner. At worst a processed message is processed
twice, and every stage recognises redeliveries (mediafm_duplicates_total). Dropped acknowledgements
are counted in mediafm_acks_dropped_total{topic}.
"""

from __future__ import annotations

import logging

from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import Message
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from streams import metrics

log = logging.getLogger(__name__)


class Consumer(AIOKafkaConsumer):
    """aiokafka's Faust consumer whose commits cover processed messages only (see the module doc)."""

    def ack(self, message: Message) -> bool:
        app = self.app
        if app.flow_control.is_active() and message.generation_id == app.consumer_generation_id:
            return super().ack(message)
        with ack_lock:  # the same critical section as Faust's ack: these sets are shared with it
            if message.acked:
                return False
            message.acked = True  # done with, as far as waiting for streams goes (wait_empty)
            self._unacked_messages.discard(message)
            notify(self._waiting_for_ack)
        metrics.acks_dropped.labels(message.topic).inc()
        log.debug("not committing %s[%d]@%d: skipped or processed across a rebalance; it is fetched again",
                  message.topic, message.partition, message.offset)
        return False


def install(app) -> None:
    """Make `app` (a faust.App not yet started) consume with Consumer."""
    app.transport.Consumer = Consumer
