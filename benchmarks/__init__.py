"""Peer benchmarks: every number is a ratio against a peer measured in the same run."""
