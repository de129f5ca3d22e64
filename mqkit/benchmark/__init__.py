"""``mqkit bench``: throughput, latency, topic-count effect and mqkit's own overhead."""
