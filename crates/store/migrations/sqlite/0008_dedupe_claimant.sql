-- One row for an event and the record that claimed it: the enricher's
-- dedupe reads and writes one key per request instead of two (a claim row
-- and an event row). NULL: marked without a claimant (the other ledgers, and
-- events marked before this migration). See crates/store/src/dedupe.rs.

ALTER TABLE dedupe ADD COLUMN claimant TEXT;
