-- Stars cool down: a pulled author whose followers dropped well below the
-- fan-out threshold is pushed again, and readers keep pulling them until
-- cooling_until (Unix milliseconds) while the writers put their newest
-- posts into the feeds. NULL: pulled. See crates/store/src/feed.rs.

ALTER TABLE pulled_authors ADD COLUMN cooling_until INTEGER;
