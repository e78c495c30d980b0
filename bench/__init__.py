"""Benchmarks of backup-coordinator: run them through scripts/bench (see README.md)."""
