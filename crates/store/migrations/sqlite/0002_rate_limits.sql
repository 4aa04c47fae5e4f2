-- Durable rate-limit windows: the notifications a per-user rate limit
-- admitted, per window key (user, channel and rule). Rows expire with the
-- rule's window: expired rows are ignored by reads and purged in bulk by the
-- writes, like the dedupe table. Idempotent: stores from before versioned
-- migrations re-run it.

CREATE TABLE IF NOT EXISTS rate_limit_admissions (
    key             TEXT NOT NULL,
    notification_id TEXT NOT NULL,
    admitted_at     INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    PRIMARY KEY (key, notification_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rate_limit_admissions_by_expiry
    ON rate_limit_admissions (expires_at);
