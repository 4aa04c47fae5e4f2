-- Reactions to feed posts (see crates/store/src/reactions.rs). Only new
-- tables (IF NOT EXISTS), so the migration re-runs harmlessly.

-- The truth: who likes what. Keyed by user: a feed page asks which of its
-- posts the reader likes.
CREATE TABLE IF NOT EXISTS likes (
    user_id  TEXT NOT NULL,
    post_id  TEXT NOT NULL,
    liked_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, post_id)
) WITHOUT ROWID;

-- Replies under a post, listed oldest first.
CREATE TABLE IF NOT EXISTS replies (
    post_id    TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    reply_id   TEXT NOT NULL,
    author_id  TEXT NOT NULL,
    body       TEXT NOT NULL,
    PRIMARY KEY (post_id, created_at, reply_id)
) WITHOUT ROWID;

-- The tally stage's counts per post, and the likes ('like:<user>') and
-- replies ('reply:<id>') they include; both written in one transaction.
CREATE TABLE IF NOT EXISTS post_tallies (
    post_id TEXT PRIMARY KEY,
    likes   INTEGER NOT NULL,
    replies INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS post_tally_members (
    post_id TEXT NOT NULL,
    member  TEXT NOT NULL,
    PRIMARY KEY (post_id, member)
) WITHOUT ROWID;
