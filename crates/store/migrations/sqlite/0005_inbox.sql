-- The in-app inbox (see crates/store/src/inbox.rs): a user's notifications
-- with their read / archived state, and the user's "seen up to" mark. Only
-- new tables, so the migration re-runs harmlessly.

-- expires_at: when the item's TTL runs out (Unix ms). Reads skip expired
-- rows; a put deletes the user's expired rows before it counts the cap.
CREATE TABLE IF NOT EXISTS inbox_items (
    user_id         TEXT NOT NULL,
    notification_id TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    category        TEXT,
    template_name   TEXT,
    title           TEXT,
    body            TEXT,
    action_url      TEXT,
    avatar_url      TEXT,
    data            TEXT NOT NULL, -- JSON object: key -> value
    read_at         INTEGER,
    archived_at     INTEGER,
    expires_at      INTEGER NOT NULL,
    PRIMARY KEY (user_id, notification_id)
) WITHOUT ROWID;
-- Pages newest first, and the cap (the oldest past it).
CREATE INDEX IF NOT EXISTS inbox_items_by_time
    ON inbox_items (user_id, created_at DESC, notification_id DESC);
-- The expired rows of one user, without walking the whole inbox.
CREATE INDEX IF NOT EXISTS inbox_items_by_expiry ON inbox_items (user_id, expires_at);

CREATE TABLE IF NOT EXISTS inbox_seen (
    user_id TEXT PRIMARY KEY,
    seen_at INTEGER NOT NULL
) WITHOUT ROWID;
