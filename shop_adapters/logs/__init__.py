"""Event log implementations: memory, append-only file, Redis Streams."""
