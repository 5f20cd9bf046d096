"""Asset checks (see the checks issue): embedding dimension, retrieval quality, index fidelity,
collection consistency, throughput."""

CHECKS: list = []
