"""Benchmark runner: absurd-orm on SQLite and PostgreSQL against peer durable-execution
engines on the same machine (see bench/README.md). Not part of the installed package."""
