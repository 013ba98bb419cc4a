"""The cloud's SQLite store: checkpoints happen in the background, not inside commits."""
from __future__ import annotations

import threading
import time

from cloud_stub import repository
from cloud_stub.repository import Store


def _write_pages(store: Store, rows: int) -> None:
    with store.write() as tx:
        tx._c.executemany("INSERT INTO merchants (nif, name, created_at) VALUES (?, ?, ?)",
                          [(f"NIF{i:06d}", "x" * 3000, "2026-11-23T00:00:00Z") for i in range(rows)])


def _checkpointers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "cloud-checkpoint"]


def test_the_wal_is_copied_into_the_database_after_a_commit(tmp_path):
    """A commit is followed, soon, by a checkpoint nobody asked for: the database file grows
    while the WAL holds far fewer pages than a writer's own checkpoint threshold."""
    assert repository.WRITER_CHECKPOINT_PAGES > 2_000
    store = Store(tmp_path / "cloud.sqlite3")
    try:
        before = (tmp_path / "cloud.sqlite3").stat().st_size
        _write_pages(store, 1_500)  # ≈ 1,200 pages of 4 KB in the WAL
        deadline = time.monotonic() + 10
        while (tmp_path / "cloud.sqlite3").stat().st_size < before + 4_000_000 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (tmp_path / "cloud.sqlite3").stat().st_size >= before + 4_000_000
        with store.read() as tx:  # and what was written reads back whole
            assert tx._c.execute("SELECT count(*) AS n FROM merchants").fetchone()["n"] == 1_500
    finally:
        store.close()


def test_without_the_background_thread_the_commit_leaves_it_to_the_writer(tmp_path):
    """The counterpart (and what makes the test above able to fail): with no checkpointer, the
    same commit leaves the pages in the WAL."""
    store = Store(tmp_path / "cloud.sqlite3", background_checkpoints=False)
    try:
        before = (tmp_path / "cloud.sqlite3").stat().st_size
        _write_pages(store, 1_500)
        time.sleep(0.3)
        assert (tmp_path / "cloud.sqlite3").stat().st_size < before + 4_000_000
        assert (tmp_path / "cloud.sqlite3-wal").stat().st_size > 4_000_000
    finally:
        store.close()


def test_close_stops_the_checkpointer(tmp_path):
    already = set(_checkpointers())
    store = Store(tmp_path / "cloud.sqlite3")
    assert set(_checkpointers()) - already
    _write_pages(store, 10)
    store.close()
    assert not set(_checkpointers()) - already


def test_checkpoints_are_spaced_not_one_per_commit(tmp_path, monkeypatch):
    """Commits within the spacing share the next checkpoint: the first commit is copied at once,
    the ones after it wait (their pages stay in the WAL), and close() does not wait the spacing out."""
    monkeypatch.setattr(repository, "CHECKPOINT_SPACING_SECONDS", 3600.0)
    already = set(_checkpointers())
    store = Store(tmp_path / "cloud.sqlite3")
    try:
        with store.write() as tx:
            tx._c.execute("INSERT INTO merchants (nif, name, created_at) VALUES ('FIRST', 'x', '2026-11-23T00:00:00Z')")
        deadline = time.monotonic() + 10
        while store.checkpoints < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.checkpoints == 1
        before = (tmp_path / "cloud.sqlite3").stat().st_size
        for i in range(30):
            with store.write() as tx:
                tx._c.execute("INSERT INTO merchants (nif, name, created_at) VALUES (?, ?, ?)",
                              (f"M{i:06d}", "x" * 3000, "2026-11-23T00:00:00Z"))
        _write_pages(store, 1_500)
        time.sleep(0.3)
        assert store.checkpoints == 1
        assert (tmp_path / "cloud.sqlite3").stat().st_size < before + 4_000_000
    finally:
        store.close()
    assert not set(_checkpointers()) - already
