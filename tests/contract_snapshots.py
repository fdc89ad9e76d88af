"""The contract every :class:`~shop_adapters.protocols.SnapshotStore` passes.

Subclass :class:`SnapshotContract` and provide the fixture ``store`` (a new,
empty store) and ``other_handle`` (a factory for another handle on the same
storage; the same object for a memory store).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from shop_adapters.protocols import SnapshotStore


class SnapshotContract:
    """Behaviour shared by every snapshot store. Not collected itself."""

    @pytest.fixture
    def store(self) -> SnapshotStore:
        raise NotImplementedError("subclasses provide a fresh, empty store")

    @pytest.fixture
    def other_handle(self, store: SnapshotStore) -> Callable[[], SnapshotStore]:
        raise NotImplementedError("subclasses provide a second handle on the same store")

    def test_is_a_snapshot_store(self, store: SnapshotStore) -> None:
        assert isinstance(store, SnapshotStore)

    def test_read_of_an_empty_store_is_none(self, store: SnapshotStore) -> None:
        assert store.read() is None

    def test_write_then_read_round_trips_bytes(self, store: SnapshotStore) -> None:
        blob = bytes(range(256)) * 3
        store.write(blob)
        assert store.read() == blob

    def test_write_overwrites(self, store: SnapshotStore) -> None:
        store.write(b"old snapshot, longer than the new one")
        store.write(b"new")
        assert store.read() == b"new"

    def test_empty_and_large_blobs(self, store: SnapshotStore) -> None:
        store.write(b"")
        assert store.read() == b""
        big = b"\x00\xff" * (1 << 20)
        store.write(big)
        assert store.read() == big

    def test_another_handle_sees_the_write(
        self, store: SnapshotStore, other_handle: Callable[[], SnapshotStore]
    ) -> None:
        store.write(b"v1")
        other = other_handle()
        assert other.read() == b"v1"
        other.write(b"v2")
        assert store.read() == b"v2"

    def test_close_is_harmless(
        self, store: SnapshotStore, other_handle: Callable[[], SnapshotStore]
    ) -> None:
        store.write(b"x")
        store.close()
        store.close()  # twice: still no error
        assert other_handle().read() == b"x"  # closing a handle loses nothing it wrote
