-- Authors with too many followers to fan out to: their posts are pulled into
-- followers' feeds at read time (the hybrid fan-out model). Idempotent:
-- stores from before versioned migrations re-run it.

CREATE TABLE IF NOT EXISTS pulled_authors (
    author_id TEXT PRIMARY KEY,
    since     INTEGER NOT NULL
) WITHOUT ROWID;

-- Posts shared with only part of the author's followers: never listed by
-- author, so never pulled into other followers' feeds.
CREATE TABLE IF NOT EXISTS restricted_posts (
    post_id TEXT PRIMARY KEY
) WITHOUT ROWID;
