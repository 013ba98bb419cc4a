"""Checkpoints off the commit path (agent/store/db.py): a commit no longer copies the WAL into
the database file itself below WRITER_CHECKPOINT_PAGES; a thread of the process does, while
writing connections are open, and stops with the last one."""
from __future__ import annotations

import threading
import time

from agent.store import db


def _checkpointers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "journal-checkpoint" and t.is_alive()]


def _wait(predicate, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_commits_leave_the_checkpoint_to_the_thread(tmp_path):
    path = tmp_path / "agent.db"
    before = len(_checkpointers())
    conn = db.connect(path)
    other = db.connect(path)  # a second writer of the same journal shares the thread
    try:
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == db.WRITER_CHECKPOINT_PAGES
        assert len(_checkpointers()) == before + 1
        conn.execute("CREATE TABLE t (body BLOB)")
        size = path.stat().st_size
        # ≈ 1,300 pages of WAL: past SQLite's default autocheckpoint (1,000), below ours.
        for _ in range(40):
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t VALUES (randomblob(128 * 1024))")
            conn.execute("COMMIT")
        # The rows reach the database file without any commit checkpointing: the thread copied them.
        assert _wait(lambda: path.stat().st_size > size + 4 * 1024 * 1024)
    finally:
        conn.close()
        other.close()
    assert _wait(lambda: len(_checkpointers()) == before)


def test_a_read_only_connection_starts_no_thread(tmp_path):
    path = tmp_path / "agent.db"
    db.connect(path).close()
    key = str(path.resolve())
    assert key not in db._Checkpointer._running  # stopped with its last writing connection
    conn = db.connect(path, readonly=True)
    try:
        assert key not in db._Checkpointer._running
    finally:
        conn.close()


def test_a_fork_waits_for_a_checkpoint_in_progress(tmp_path):
    # `stalela verify` forks its workers: a child must not start with SQLite's locks held by a
    # checkpointer thread it does not have. The fork waits while a checkpointer is inside SQLite.
    import os

    conn = db.connect(tmp_path / "agent.db")
    try:
        db._in_sqlite.acquire()  # as a checkpointer inside SQLite holds it
        forked = threading.Event()
        status = []

        def fork():
            pid = os.fork()
            if pid == 0:
                os._exit(0 if not db._Checkpointer._running and db._in_sqlite.acquire(timeout=5) else 1)
            forked.set()
            status.append(os.waitpid(pid, 0)[1])
        thread = threading.Thread(target=fork)
        thread.start()
        assert not forked.wait(0.3)  # the fork waits for the checkpoint...
        db._in_sqlite.release()
        assert forked.wait(10)  # ...and happens once it is over
        thread.join(10)
        assert status == [0]  # the child started with free locks and no checkpointers
    finally:
        conn.close()
