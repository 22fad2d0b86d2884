"""Fills a dropsync catalog with a long history: N forwarded conversations from past months,
spread over TENANTS tenants, each with its metadata file, recording file (purged), recording row
and delivery, as the daemon leaves them. Used by bench/history.sh; the catalog must have been
created (migrated) by `dropsync run` first.

    python3 bench/history.py DB N TENANTS [LAST_DAYS_AGO]

LAST_DAYS_AGO (default 40) is how long ago the newest conversation arrived; the oldest arrived a
year before it.
"""
import json
import sqlite3
import sys
import time

db, n, tenants = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
last_days_ago = int(sys.argv[4]) if len(sys.argv) > 4 else 40
conn = sqlite3.connect(db)
conn.execute("PRAGMA synchronous = OFF")
now = int(time.time() * 1000)
year = 365 * 24 * 3600 * 1000
rows_per_file = 1000
fields = json.dumps({"Contact Reference": "x", "Agent Email": "a@example.com", "Queue": "sales"})
cur = conn.cursor()
file_id = cur.execute("SELECT coalesce(max(id), 0) FROM files").fetchone()[0]
meta_of = {}  # tenant -> its current metadata file's id
conv_id = cur.execute("SELECT coalesce(max(id), 0) FROM conversations").fetchone()[0]
for i in range(n):
    tenant = f"t{i % tenants:02d}"
    at = now - year + (i * year) // n - last_days_ago * 24 * 3600 * 1000
    if i % (rows_per_file * tenants) < tenants:
        file_id += 1
        cur.execute(
            "INSERT INTO files (id, tenant, rel_path, dir, name, stem, kind, via, size, mtime_ns, arrived_at, state, left_at)"
            " VALUES (?, ?, ?, '', ?, ?, 'metadata', 'sftp', 50000, 0, ?, 'purged', ?)",
            (file_id, tenant, f"b{file_id}.csv", f"b{file_id}.csv", f"b{file_id}", at, at + 1000),
        )
        cur.execute(
            "INSERT INTO metadata_files (file_id, tenant, rel_path, dir, format, via, status, received_at, report_stale)"
            " VALUES (?, ?, ?, '', 'csv', 'sftp', 'parsed', ?, 0)",
            (file_id, tenant, f"b{file_id}.csv", at),
        )
        meta_of[tenant] = cur.lastrowid
    meta = meta_of[tenant]
    file_id += 1
    conv_id += 1
    name = f"c{conv_id}.wav"
    cur.execute(
        "INSERT INTO files (id, tenant, rel_path, dir, name, stem, kind, via, size, mtime_ns, sha256, arrived_at, state, left_at, duration_ms)"
        " VALUES (?, ?, ?, '', ?, ?, 'recording', 'sftp', 480000, 0, ?, ?, 'purged', ?, 30000)",
        (file_id, tenant, name, name, name[:-4], "0" * 64, at, at + 1000),
    )
    cur.execute(
        "INSERT INTO conversations (id, tenant, conversation_id, metadata_file_id, row_no, dir, recording_text, state,"
        " agent, contact_time, fields, content_hash, via, received_at, attempts, forwarded_at, changed_at,"
        " charged_month, charged_seconds)"
        " VALUES (?, ?, ?, ?, ?, '', ?, 'forwarded', 'a@example.com', '2026-01-01T00:00:00Z', ?, ?, 'sftp', ?, 1, ?, ?, '2026-01', 30)",
        (conv_id, tenant, f"C-{conv_id}", meta, 2 + i // tenants % rows_per_file, name, fields, "0" * 64, at, at + 500, at + 500),
    )
    cur.execute(
        "INSERT INTO recordings (conversation, position, tenant, dir, name, file_id, key, bytes, sha256)"
        " VALUES (?, 0, ?, '', ?, ?, ?, 480000, ?)",
        (conv_id, tenant, name, file_id, f"{tenant}/2026/01/01/C-{conv_id}/{name}", "0" * 64),
    )
    cur.execute(
        "INSERT INTO deliveries (conversation, sink, key_prefix, started_at, finished_at) VALUES (?, 'dir:x', ?, ?, ?)",
        (conv_id, f"{tenant}/2026/01/01/C-{conv_id}/", at, at + 500),
    )
    if i % 100000 == 99999:
        conn.commit()
conn.commit()
conn.execute("ANALYZE")
conn.commit()
