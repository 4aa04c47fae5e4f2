-- The senders' sent-ledger moves into the notification log: an entry in the
-- state `sent` sets sent_at, which no later entry clears, so one write per
-- send both logs it and marks it sent (it was a status write and a dedupe
-- write). NULL: never sent, or sent before this migration (those rows say
-- so by their state). See crates/store/src/notification_log.rs.

ALTER TABLE notification_status ADD COLUMN sent_at INTEGER;
