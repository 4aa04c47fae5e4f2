-- Migration 1: the initial schema of the embedded store. Applied once and
-- recorded in schema_migrations; stays idempotent (IF NOT EXISTS) because
-- stores from before versioned migrations re-run it.

CREATE TABLE IF NOT EXISTS users (
    user_id      TEXT PRIMARY KEY,
    display_name TEXT NOT NULL DEFAULT '',
    avatar_url   TEXT,
    locale       TEXT,
    email        TEXT,
    phone        TEXT,
    updated_at   INTEGER NOT NULL
) WITHOUT ROWID;

-- An invalidation may arrive before the registration it supersedes, so a row
-- can hold only the tombstone (platform and registered_at NULL).
CREATE TABLE IF NOT EXISTS devices (
    user_id        TEXT NOT NULL,
    token          TEXT NOT NULL,
    platform       TEXT,
    registered_at  INTEGER,
    invalidated_at INTEGER,
    PRIMARY KEY (user_id, token)
) WITHOUT ROWID;

-- category '' = channel-wide preference.
CREATE TABLE IF NOT EXISTS preferences (
    user_id    TEXT NOT NULL,
    category   TEXT NOT NULL,
    channel    TEXT NOT NULL,
    opt_in     INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, category, channel)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS template_versions (
    name           TEXT NOT NULL,
    version        INTEGER NOT NULL,
    category       TEXT,
    params         TEXT NOT NULL, -- JSON array
    default_locale TEXT NOT NULL,
    variants       TEXT NOT NULL, -- JSON object: locale -> content
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (name, version)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS dedupe (
    scope      TEXT NOT NULL,
    key        TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedupe_by_expiry ON dedupe (expires_at);

CREATE TABLE IF NOT EXISTS notification_status (
    notification_id TEXT NOT NULL,
    channel         TEXT NOT NULL,
    target          TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    state           TEXT NOT NULL,
    detail          TEXT,
    attempt         INTEGER NOT NULL,
    at              INTEGER NOT NULL,
    PRIMARY KEY (notification_id, channel, target)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS posts (
    post_id    TEXT PRIMARY KEY,
    author_id  TEXT NOT NULL,
    body       TEXT NOT NULL,
    media_urls TEXT NOT NULL, -- JSON array
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS posts_by_author ON posts (author_id, created_at DESC, post_id DESC);

CREATE TABLE IF NOT EXISTS follows (
    follower_id TEXT NOT NULL,
    followee_id TEXT NOT NULL,
    since       INTEGER NOT NULL,
    PRIMARY KEY (followee_id, follower_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS follows_by_follower ON follows (follower_id, followee_id);

-- Kept beside the edges (same transaction) so counting stays O(1) for
-- authors with millions of followers.
CREATE TABLE IF NOT EXISTS follower_counts (
    user_id   TEXT PRIMARY KEY,
    followers INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS mutes (
    user_id       TEXT NOT NULL,
    muted_user_id TEXT NOT NULL,
    PRIMARY KEY (user_id, muted_user_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS feed_entries (
    owner_id   TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    post_id    TEXT NOT NULL,
    author_id  TEXT NOT NULL,
    PRIMARY KEY (owner_id, created_at, post_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS counters (
    scope TEXT NOT NULL,
    key   TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS scheduled (
    item_id TEXT NOT NULL,
    due_at  INTEGER NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (due_at, item_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS apps (
    app_key       TEXT PRIMARY KEY,
    secret_hash   TEXT NOT NULL,
    name          TEXT NOT NULL,
    permissions   TEXT NOT NULL, -- JSON array
    quota_per_sec INTEGER,
    revoked       INTEGER NOT NULL,
    created_at    INTEGER NOT NULL
) WITHOUT ROWID;
