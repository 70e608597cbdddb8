"""Prometheus metrics of a worker, served at the faust web server's /metrics."""

from prometheus_client import Counter, Gauge, Histogram

messages = Counter("mediafm_messages_total", "Messages consumed, by stage", ["stage"])
shots = Counter("mediafm_shots_total", "Shots produced, by stage", ["stage"])
duplicates = Counter("mediafm_duplicates_total", "Redelivered messages recognised and skipped", ["stage"])
dead_letters = Counter("mediafm_dead_letters_total", "Messages sent to the dead-letter topic", ["stage"])
triton_seconds = Histogram("mediafm_triton_seconds", "Triton call latency", ["model"],
                           buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
stage_seconds = Histogram("mediafm_stage_latency_seconds",
                          "Time from a shot's publication (title request / live segment) to this stage's output",
                          ["stage", "kind"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 7.5, 10,
                                                      15, 30, 60, 300))
e2e_seconds = Histogram("mediafm_e2e_latency_seconds",
                        "From publication (title request / live segment) to a contextual embedding",
                        ["kind", "final"], buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 7.5, 10, 20, 30, 60,
                                                   120, 300, 600))
consumer_lag = Gauge("mediafm_consumer_lag_messages", "Messages on a partition not yet committed by this worker",
                     ["topic", "partition"])
offsets_skipped = Counter("mediafm_offsets_skipped_total",
                          "Offsets of a partition that never reached an agent (see streams.runtime.Runtime.events)", ["topic"])
acks_dropped = Counter("mediafm_acks_dropped_total",
                       "Acknowledgements not committed: messages skipped or processed across a rebalance, fetched "
                       "again (see streams/consumer.py)", ["topic"])
live_decoded = Counter("mediafm_live_decoded_segments_total",
                       "Live segments the encode stage found decoded in memory (hit) or decoded again (miss); "
                       "see mediafm/media/segment_cache.py", ["result"])
table_memory = Gauge("mediafm_table_memory_bytes",
                     "RocksDB memory of the worker's tables (block cache and the memtables charged to it; "
                     "bounded by table_memory_mb, see streams/store.py)")
held_shots = Gauge("mediafm_held_shots_bytes",
                   "Fused shots of titles still arriving, held in memory (bounded by held_shots_mb; "
                   "see streams/fused_source.py)")
live_shots_lost = Counter("mediafm_live_shots_lost_total",
                          "Live shots that never reached the live stage (dead-lettered upstream); the event went on")
read_back = Counter("mediafm_read_back_shots_total",
                    "Fused shots read back from their topic by offset when their title was complete "
                    "(not held in memory: a restart, a rebalance, held_shots_mb)")
titles_given_up = Counter("mediafm_titles_given_up_total",
                          "Title publications given up because a stage refused some of their shots (ShotsRefused; "
                          "one dead letter each, for the title)")
