"""shop_adapters: the imperative shell around :mod:`shop_core`.

Event logs (memory, append-only file, Redis Streams), snapshot stores, codecs,
the runner and the command-line tools. Imports ``shop_core``; never the reverse.
"""

from .protocols import ORIGIN, DeadLetter, EventLog, Fields, Position, Record, SnapshotStore

__all__ = ["ORIGIN", "DeadLetter", "EventLog", "Fields", "Position", "Record", "SnapshotStore"]
