"""Snapshot store implementations: memory, file, Redis."""
