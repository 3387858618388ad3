"""The result cache's index: where the stems made for a cache key are (same input bytes, model
and options give the same key)."""
from __future__ import annotations

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    cache_key TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    folder TEXT NOT NULL
);
"""


class ResultTable:
    def __init__(self, journal):
        self.db = journal.db

    def remember(self, cache_key: str, task_id: str, folder: str) -> None:
        """Record where the stems for `cache_key` are."""
        self.db.execute("INSERT OR REPLACE INTO results (cache_key, task_id, folder) VALUES (?,?,?)",
                        (cache_key, task_id, folder))

    def forget(self, cache_keys: list[str]) -> None:
        """Forget the stems of `cache_keys` (their folders are gone)."""
        self.db.executemany("DELETE FROM results WHERE cache_key=?", [(k,) for k in cache_keys])

    def find(self, cache_key: str) -> tuple[str, str] | None:
        """`(task_id, folder)` of stems made earlier for `cache_key`, if any."""
        return self.db.execute("SELECT task_id, folder FROM results WHERE cache_key=?",
                               (cache_key,)).fetchone()
