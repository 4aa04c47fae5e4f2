-- Authors with too many followers to fan out to: their posts are pulled into
-- followers' feeds at read time (the hybrid fan-out model). Idempotent,
-- applied on each migrate.

CREATE TABLE IF NOT EXISTS pulled_authors (
    author_id TEXT PRIMARY KEY,
    since     INTEGER NOT NULL
) WITHOUT ROWID;
