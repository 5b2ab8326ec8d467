"""What the MX saw for DMARC aggregate reports: one counter per distinct observation, per policy
domain and UTC day, in `<data_dir>/reports/dmarc.sqlite`.

Owns: the schema and every statement; an observation is one UPSERT (count + 1) in WAL mode with
synchronous=NORMAL: it survives a crash of the process (the report is statistics; a power cut may
lose the last few counts, never the mail); which (day, domain) reports were sent.
Does not own: what is observed or sent when (dmarc_send.py), the XML (dmarc_xml.py).
Blocking: call from a worker thread (one lock serialises this process's calls; several processes
share the file through SQLite's own locking).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from mailhaven.reports.dmarc_xml import Published, Row

_SCHEMA = """
CREATE TABLE IF NOT EXISTS observation (
    day TEXT NOT NULL, domain TEXT NOT NULL, source_ip TEXT NOT NULL, disposition TEXT NOT NULL,
    dkim TEXT NOT NULL, spf TEXT NOT NULL, header_from TEXT NOT NULL, envelope_from TEXT NOT NULL,
    reasons TEXT NOT NULL, dkim_results TEXT NOT NULL, spf_domain TEXT NOT NULL, spf_scope TEXT NOT NULL,
    spf_result TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (day, domain, source_ip, disposition, dkim, spf, header_from, envelope_from, reasons,
                 dkim_results, spf_domain, spf_scope, spf_result)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS policy (
    day TEXT NOT NULL, domain TEXT NOT NULL, published TEXT NOT NULL, rua TEXT NOT NULL,
    PRIMARY KEY (day, domain)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sent (
    day TEXT NOT NULL, domain TEXT NOT NULL, report_id TEXT NOT NULL, outcome TEXT NOT NULL,
    PRIMARY KEY (day, domain)
) WITHOUT ROWID;
"""
_KEY = ("source_ip", "disposition", "dkim", "spf", "header_from", "envelope_from", "reasons", "dkim_results",
        "spf_domain", "spf_scope", "spf_result")


class DmarcLog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, day: str, published: Published, rua: Sequence[str], row: Row) -> None:
        """Count one observation (row.count is ignored: one message)."""
        values = asdict(row)
        values["reasons"] = json.dumps(values["reasons"])
        values["dkim_results"] = json.dumps(values["dkim_results"])
        cols = ", ".join(_KEY)
        marks = ", ".join("?" for _ in _KEY)
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute(
                    f"INSERT INTO observation (day, domain, {cols}, count) VALUES (?, ?, {marks}, 1) "
                    f"ON CONFLICT DO UPDATE SET count = count + 1",
                    (day, published.domain, *(values[k] for k in _KEY)))
                self._db.execute(
                    "INSERT INTO policy (day, domain, published, rua) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT DO UPDATE SET published = excluded.published, rua = excluded.rua",
                    (day, published.domain, json.dumps(asdict(published)), json.dumps(list(rua))))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def due(self, before_day: str) -> list[tuple[str, str]]:
        """(day, domain) with observations, before `before_day` (a finished UTC day), not yet sent."""
        with self._lock:
            return [(d, dom) for d, dom in self._db.execute(
                "SELECT p.day, p.domain FROM policy p LEFT JOIN sent s ON s.day = p.day AND s.domain = p.domain "
                "WHERE p.day < ? AND s.day IS NULL ORDER BY p.day, p.domain", (before_day,))]

    def load(self, day: str, domain: str) -> tuple[Published, list[str], list[Row]]:
        with self._lock:
            published, rua = self._db.execute("SELECT published, rua FROM policy WHERE day = ? AND domain = ?",
                                              (day, domain)).fetchone()
            found = self._db.execute(f"SELECT {', '.join(_KEY)}, count FROM observation "
                                     "WHERE day = ? AND domain = ? ORDER BY count DESC", (day, domain)).fetchall()
        rows = []
        for values in found:
            d = dict(zip((*_KEY, "count"), values, strict=True))
            d["reasons"] = tuple(tuple(x) for x in json.loads(d["reasons"]))
            d["dkim_results"] = tuple(tuple(x) for x in json.loads(d["dkim_results"]))
            rows.append(Row(**d))
        return Published(**json.loads(published)), list(json.loads(rua)), rows

    def mark_sent(self, day: str, domain: str, report_id: str, outcome: str) -> None:
        """Done with this report, whatever the outcome ("sent to ...", "no permitted rua", ...)."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO sent (day, domain, report_id, outcome) VALUES (?, ?, ?, ?)",
                             (day, domain, report_id, outcome))

    def sent_on(self, day: str) -> int:
        """Reports sent for `day` (the per-day cap counts them; a report that went nowhere is not)."""
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM sent WHERE day = ? AND outcome LIKE 'sent to %'",
                                        (day,)).fetchone()[0])

    def outcome(self, day: str, domain: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT outcome FROM sent WHERE day = ? AND domain = ?", (day, domain)).fetchone()
        return None if row is None else str(row[0])

    def prune(self, before_day: str) -> None:
        """Forget everything about days before `before_day`."""
        with self._lock:
            for table in ("observation", "policy", "sent"):
                self._db.execute(f"DELETE FROM {table} WHERE day < ?", (before_day,))  # noqa: S608


__all__ = ["DmarcLog"]
