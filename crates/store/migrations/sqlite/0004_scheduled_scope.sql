-- The schedule is scoped by deployment (kafka.topic_prefix): deployments
-- sharing this file must each release only their own items. The scope is
-- part of the key, so two deployments may hold the same item id. SQLite
-- cannot change a table's key, so the table is rebuilt; the rows already
-- held move over with the empty scope, which `due` of every scope returns
-- (see crates/store/src/schedule.rs), so none is lost by the upgrade.
-- Runs in one transaction with its schema_migrations record.

CREATE TABLE scheduled_items (
    scope   TEXT NOT NULL,
    item_id TEXT NOT NULL,
    due_at  INTEGER NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (scope, due_at, item_id)
) WITHOUT ROWID;

INSERT INTO scheduled_items (scope, item_id, due_at, payload)
    SELECT '', item_id, due_at, payload FROM scheduled;

DROP TABLE scheduled;
