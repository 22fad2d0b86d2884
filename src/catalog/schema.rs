//! The SQLite schema, as numbered migrations applied under `PRAGMA user_version`.
//!
//! Append a migration; never edit one that has shipped.

pub const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
CREATE TABLE files (
    id           INTEGER PRIMARY KEY,
    tenant       TEXT NOT NULL,
    rel_path     TEXT NOT NULL,            -- inside the tenant's drop folder, '/'-separated
    dir          TEXT NOT NULL,            -- folder part of rel_path, '' at the root
    name         TEXT NOT NULL,
    stem         TEXT NOT NULL,            -- name without its extension
    kind         TEXT NOT NULL,            -- recording | metadata | zip | unknown
    via          TEXT NOT NULL,            -- sftp | ftp | local
    size         INTEGER NOT NULL,
    mtime_ns     INTEGER NOT NULL,
    sha256       TEXT,                     -- recordings, hashed at arrival
    arrived_at   INTEGER NOT NULL,         -- unix ms
    state        TEXT NOT NULL,            -- present | archived | gone | purged
    archive_path TEXT,
    left_at      INTEGER,                  -- when it left the drop folder
    orphan_since INTEGER                   -- a recording no row claimed within grace
);
CREATE UNIQUE INDEX files_present ON files(tenant, rel_path) WHERE state = 'present';
CREATE INDEX files_by_name ON files(tenant, dir, name) WHERE state = 'present';
CREATE INDEX files_by_stem ON files(tenant, dir, stem) WHERE state = 'present';
CREATE INDEX files_archived ON files(left_at) WHERE state = 'archived';

-- Files that get a report: metadata files, zip batches, files of unknown kind.
CREATE TABLE metadata_files (
    id          INTEGER PRIMARY KEY,
    file_id     INTEGER NOT NULL REFERENCES files(id),
    tenant      TEXT NOT NULL,
    rel_path    TEXT NOT NULL,
    dir         TEXT NOT NULL,
    format      TEXT NOT NULL,             -- csv | tsv | json | jsonl | zip | unknown
    via         TEXT NOT NULL,
    status      TEXT NOT NULL,             -- parsing | parsed | rejected
    reason      TEXT,                      -- why the whole file was rejected
    rows_done   INTEGER NOT NULL DEFAULT 0,-- last row committed while parsing (crash resume)
    received_at INTEGER NOT NULL,
    report_stale INTEGER NOT NULL DEFAULT 1   -- changes not yet in the report (0 = up to date)
);
CREATE INDEX metadata_stale ON metadata_files(id) WHERE report_stale > 0;
CREATE INDEX metadata_file ON metadata_files(file_id);
CREATE INDEX metadata_parsing ON metadata_files(id) WHERE status = 'parsing';

-- Lines of a report that are not conversations (zip entries that were refused).
CREATE TABLE refusals (
    metadata_file_id INTEGER NOT NULL REFERENCES metadata_files(id),
    line        INTEGER NOT NULL,
    name        TEXT NOT NULL,
    reason      TEXT NOT NULL,
    PRIMARY KEY (metadata_file_id, line)
);

-- One row of one metadata file: a submission of conversation (tenant, conversation_id).
-- The same conversation sent again is a new submission; the latest one forwarded wins.
CREATE TABLE conversations (
    id              INTEGER PRIMARY KEY,
    tenant          TEXT NOT NULL,
    conversation_id TEXT,                  -- NULL when the row was rejected before it had one
    metadata_file_id INTEGER NOT NULL REFERENCES metadata_files(id),
    row_no          INTEGER NOT NULL,
    dir             TEXT NOT NULL,
    recording_text  TEXT,                  -- the recording column as written, for reports
    state           TEXT NOT NULL,         -- waiting|ready|forwarding|forwarded|rejected|expired|failed
    detail          TEXT,                  -- rejection reason, last error, or a note
    agent           TEXT,
    contact_time    TEXT,                  -- RFC 3339, UTC
    fields          TEXT,                  -- JSON object, every original column in order
    content_hash    TEXT,                  -- set when ready: decides "identical" vs "updated"
    updated         INTEGER NOT NULL DEFAULT 0,
    via             TEXT NOT NULL,
    received_at     INTEGER NOT NULL,
    deadline        INTEGER,               -- waiting until (grace)
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,               -- the durable queue: due time of the next attempt
    forwarded_at    INTEGER,
    changed_at      INTEGER NOT NULL
);
CREATE INDEX conv_key ON conversations(tenant, conversation_id, state);
CREATE INDEX conv_file ON conversations(metadata_file_id, conversation_id);
CREATE INDEX conv_file_row ON conversations(metadata_file_id, row_no);
CREATE INDEX conv_file_state ON conversations(metadata_file_id, state);
-- The queue: equality on state, then due order, straight from the index (no sort per claim).
CREATE INDEX conv_queue ON conversations(state, next_attempt_at, id);
CREATE INDEX conv_deadline ON conversations(state, deadline);
CREATE INDEX conv_state ON conversations(state, tenant);

CREATE TABLE recordings (
    conversation INTEGER NOT NULL REFERENCES conversations(id),
    position     INTEGER NOT NULL,
    tenant       TEXT NOT NULL,
    dir          TEXT NOT NULL,
    name         TEXT,                     -- an exact file name, or
    stem         TEXT,                     -- <stem>.<any recording extension>
    file_id      INTEGER REFERENCES files(id),
    key          TEXT,                     -- object key, bytes and sha256 as forwarded
    bytes        INTEGER,
    sha256       TEXT,
    PRIMARY KEY (conversation, position)
);
CREATE INDEX rec_file ON recordings(file_id);
CREATE INDEX rec_open_name ON recordings(tenant, dir, name) WHERE file_id IS NULL;
CREATE INDEX rec_open_stem ON recordings(tenant, dir, stem) WHERE file_id IS NULL;

CREATE TABLE deliveries (
    id           INTEGER PRIMARY KEY,
    conversation INTEGER NOT NULL REFERENCES conversations(id),
    sink         TEXT NOT NULL,
    key_prefix   TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER NOT NULL
);
CREATE INDEX deliveries_conv ON deliveries(conversation);

CREATE TABLE tenant_reports (
    tenant        TEXT PRIMARY KEY,
    orphans_stale INTEGER NOT NULL DEFAULT 1
);

-- A report is rewritten whenever one of its rows changes state. The counter is bumped in the
-- same transaction as the change, and cleared only if it still holds the value the writer read,
-- so neither a crash nor a change during the write leaves a report silently out of date.
CREATE TRIGGER conv_report_insert AFTER INSERT ON conversations BEGIN
    UPDATE metadata_files SET report_stale = report_stale + 1 WHERE id = NEW.metadata_file_id;
END;
CREATE TRIGGER conv_report_update AFTER UPDATE OF state, detail ON conversations BEGIN
    UPDATE metadata_files SET report_stale = report_stale + 1 WHERE id = NEW.metadata_file_id;
END;
CREATE TRIGGER orphan_report AFTER UPDATE OF orphan_since, state ON files
WHEN OLD.orphan_since IS NOT NULL OR NEW.orphan_since IS NOT NULL BEGIN
    INSERT INTO tenant_reports(tenant, orphans_stale) VALUES (NEW.tenant, 1)
    ON CONFLICT(tenant) DO UPDATE SET orphans_stale = orphans_stale + 1;
END;
"#,
    // 2: FTP sources we poll, and what we know of each remote file (issue 5).
    r#"
CREATE TABLE ftp_sources (
    source        TEXT PRIMARY KEY,         -- "<tenant> <url>": stable while the URL is
    tenant        TEXT NOT NULL,
    url           TEXT NOT NULL,
    last_poll_at  INTEGER,
    last_ok_at    INTEGER,
    last_error    TEXT,
    last_error_at INTEGER,
    errors_in_row INTEGER NOT NULL DEFAULT 0,
    files_pulled  INTEGER NOT NULL DEFAULT 0,
    bytes_pulled  INTEGER NOT NULL DEFAULT 0,
    remote_files  INTEGER NOT NULL DEFAULT 0,
    waiting       INTEGER NOT NULL DEFAULT 0   -- listed, not pulled yet (settling or failing)
);

-- One row per remote file in the latest complete listing. A file is pulled once its size and
-- mtime stayed the same for min_age (stable_since), and again only if they change.
CREATE TABLE ftp_files (
    source           TEXT NOT NULL,
    path             TEXT NOT NULL,         -- relative to the source's folder
    size             INTEGER NOT NULL,
    mtime            INTEGER NOT NULL,      -- ms since the epoch, as the server lists it
    first_seen_at    INTEGER NOT NULL,
    stable_since     INTEGER NOT NULL,
    partial          TEXT,                  -- "size:mtime" the temp file's bytes belong to
    downloaded_at    INTEGER,
    downloaded_size  INTEGER,
    downloaded_mtime INTEGER,
    PRIMARY KEY (source, path)
) WITHOUT ROWID;
"#,
    // 3: intake work items (issue 11). An arrival is recorded here before it is processed, so
    // a failure or a crash retries it; lanes take them per tenant, in turn.
    r#"
CREATE TABLE intake_queue (
    id              INTEGER PRIMARY KEY,
    tenant          TEXT NOT NULL,
    kind            TEXT NOT NULL,          -- file | settle | scan
    rel_path        TEXT NOT NULL,          -- '' for a scan of the tenant's whole folder
    via             TEXT NOT NULL,
    rank            INTEGER NOT NULL,       -- taken in this order: 0 scans, 1 light, 2 heavy
                                            -- (parsed or unpacked); scans and heavy ones alone
    size            INTEGER,                -- settle: last seen; file: what `sha256` belongs to
    mtime_ns        INTEGER,
    sha256          TEXT,                   -- computed while the file was written
    version         INTEGER NOT NULL DEFAULT 0, -- bumped by a new event while being processed
    enqueued_at     INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    UNIQUE (tenant, kind, rel_path)
);
-- A tenant's next unit straight from the index, however long its queue (no sort per claim).
CREATE INDEX intake_due ON intake_queue(tenant, rank, next_attempt_at, id);
CREATE INDEX intake_next ON intake_queue(next_attempt_at);
"#,
    // 4: a file's inode (the archive race). A file is claimed (`leaving`) before it is moved to
    // the archive, and the move checks the inode, so a file re-sent under the same name in the
    // meantime is a new file and never archived in place of the one that was decided.
    r#"
ALTER TABLE files ADD COLUMN ino INTEGER;  -- NULL for files recorded before migration 4
-- state gains 'leaving': claimed for the archive, being moved (archive_path is where to).
-- Few at a time; looked up by path (a repeated event) and all together (settling them).
CREATE INDEX files_leaving ON files(tenant, rel_path) WHERE state = 'leaving';
"#,
    // 5: FTP listings that are incomplete, and FTP files that changed after they were pulled
    // (issue 13).
    r#"
ALTER TABLE ftp_sources ADD COLUMN listing_incomplete TEXT;  -- folders not seen whole, and why
-- A remote file pulled before whose size or mtime changed: noted before it is pulled again, so
-- that its arrival re-sends the conversations that used the version pulled before.
CREATE TABLE ftp_revisions (
    tenant   TEXT NOT NULL,
    rel_path TEXT NOT NULL,
    source   TEXT NOT NULL,
    size     INTEGER NOT NULL,          -- of the new version, as listed
    noted_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, rel_path)
) WITHOUT ROWID;
-- Earlier records of a path, whatever their state (finding what a revision replaces).
CREATE INDEX files_path ON files(tenant, rel_path);
"#,
    // 6: recording durations and audio checks (issue 15).
    r#"
ALTER TABLE files ADD COLUMN duration_ms INTEGER;  -- recordings: read from the headers at intake
ALTER TABLE files ADD COLUMN audio_error TEXT;     -- recordings that are not readable audio of
                                                   -- their extension's format (check_audio on)
-- Minute allocations (SPEC §9): a conversation is counted once, when it is first claimed for
-- forwarding, in the same transaction; state gains 'held' (over the allocation).
ALTER TABLE conversations ADD COLUMN charged_month TEXT;     -- 'YYYY-MM', the tenant's time zone
ALTER TABLE conversations ADD COLUMN charged_seconds INTEGER;
CREATE TABLE minute_usage (
    tenant  TEXT NOT NULL,
    month   TEXT NOT NULL,
    seconds INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, month)
) WITHOUT ROWID;
CREATE INDEX conv_held ON conversations(tenant, received_at, id) WHERE state = 'held';
"#,
    // 7: poison work (issue 20). An intake item that failed `max_attempts` times, or with an
    // error no retry can mend, is kept (with `next_attempt_at` pushed to the end of time, so no
    // due scan finds it) until `dropsync retry` queues it again.
    r#"
ALTER TABLE intake_queue ADD COLUMN failed_at INTEGER;  -- NULL: live
-- metadata_files.status gains 'failed': its item failed for good; the report says why.
"#,
    // 8: a long history costs nothing to read (issue 20). Conversations per tenant and state
    // are counted by triggers, so `status` and `/metrics` read a few rows however many
    // conversations the catalog holds; pruning (past `[retention] catalog`) adds the rows it
    // forgets back, so the counts keep them.
    r#"
CREATE TABLE conversation_counts (
    tenant TEXT NOT NULL,
    state  TEXT NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (tenant, state)
) WITHOUT ROWID;
INSERT INTO conversation_counts (tenant, state, n)
    SELECT tenant, state, count(*) FROM conversations GROUP BY tenant, state;
CREATE TRIGGER conversation_counted AFTER INSERT ON conversations BEGIN
    INSERT INTO conversation_counts (tenant, state, n) VALUES (NEW.tenant, NEW.state, 1)
    ON CONFLICT (tenant, state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER conversation_recounted AFTER UPDATE OF state ON conversations
WHEN OLD.state IS NOT NEW.state BEGIN
    UPDATE conversation_counts SET n = n - 1 WHERE tenant = OLD.tenant AND state = OLD.state;
    INSERT INTO conversation_counts (tenant, state, n) VALUES (NEW.tenant, NEW.state, 1)
    ON CONFLICT (tenant, state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER conversation_uncounted AFTER DELETE ON conversations BEGIN
    UPDATE conversation_counts SET n = n - 1 WHERE tenant = OLD.tenant AND state = OLD.state;
END;
-- Pruning finds metadata files that left long ago, oldest first, then checks their rows.
CREATE INDEX files_left_batches ON files(left_at) WHERE state IN ('purged', 'gone') AND kind != 'recording';
CREATE INDEX files_left_orphans ON files(left_at) WHERE state IN ('purged', 'gone') AND orphan_since IS NOT NULL;
CREATE INDEX conv_ended ON conversations(metadata_file_id, changed_at)
    WHERE state IN ('forwarded', 'rejected', 'expired');
"#,
    // 9: a file's device beside its inode (issue 20). Retention and archive moves take a file
    // only if the one at its path is still the one recorded: device and inode, compared on a
    // descriptor, so that a new upload of the same name is never deleted or moved in its place.
    r#"
ALTER TABLE files ADD COLUMN dev INTEGER;  -- NULL for files recorded before migration 9
"#,
    // 10: forwarders take tenants in turn (issue 20): whose turn it is, and that tenant's due
    // conversations in due order, straight from an index of the ready ones.
    r#"
CREATE INDEX conv_ready ON conversations(tenant, next_attempt_at, id) WHERE state = 'ready';
"#,
    // 11: the web console (issue 23): a tenant's calls newest first, and its days, straight
    // from an index however long the history.
    r#"
CREATE INDEX conv_tenant_received ON conversations(tenant, received_at, id);
-- A batch uploaded from the console: the metadata files of its folder.
CREATE INDEX metadata_by_dir ON metadata_files(tenant, dir);
"#,
    // 12: several nodes (issue 24). A conversation being forwarded is held by a node until
    // `lease_until` (renewed while that node lives); other work is held by name (`leases`);
    // each node says it is alive in `nodes`. One SQLite node writes them too, so that a
    // catalog moved to PostgreSQL later reads the same.
    r#"
ALTER TABLE conversations ADD COLUMN lease_owner TEXT;
ALTER TABLE conversations ADD COLUMN lease_until INTEGER;
CREATE INDEX conv_leases ON conversations(lease_until) WHERE state = 'forwarding';
CREATE TABLE leases (
    name  TEXT PRIMARY KEY,               -- "intake <tenant>", "ftp <source>", "housekeeping"
    owner TEXT NOT NULL,                  -- a node_id
    until INTEGER NOT NULL                -- unix ms
) WITHOUT ROWID;
CREATE TABLE nodes (
    node_id      TEXT PRIMARY KEY,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    version      TEXT NOT NULL
) WITHOUT ROWID;
"#,
];
