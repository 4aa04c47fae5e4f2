//! Whether a record may have been handled before.
//!
//! Stages are at-least-once: a record is handled again when its partition's
//! new owner (after a crash, a restart or a rebalance) reads it from the
//! committed offset, and an output is produced twice when a produce that
//! reported a failure had in fact landed. A stage whose effect outside Kafka
//! must not repeat (a sender calling its provider) needs its ledger only for
//! such records; every other record it can trust to be new, and skip a store
//! read per record.
//!
//! So the runner tells them apart ([`Handling`] in `RecordMeta`):
//! - **Read again**: when a member is given a partition, it asks where the
//!   partition ends (its high watermark) in the rebalance callback, before
//!   it reads any of its records. Whatever a previous owner handled lies
//!   below that end (it handled only what was written before it lost the
//!   partition), so records below it may repeat; records beyond it are new
//!   to this group. With several partitions the callback costs one round
//!   trip each, once per rebalance.
//! - **Made again**: an output of a record that may repeat may repeat too,
//!   and so does an output produced again after a failed produce. The runner
//!   marks both with the [`MAYBE_REPEAT_HEADER`], and a record read with it
//!   may repeat. A processor marks what it knows to be a re-make itself
//!   ([`Emitter::maybe_repeats`](crate::Emitter::maybe_repeats)).
//!
//! If the end offset cannot be read, every record of the partition counts as
//! one that may repeat (a read per record, as if this did not exist) until
//! it can.

use std::collections::HashMap;

use rdkafka::{
    Message,
    message::{Header, Headers, OwnedHeaders},
};
use tidings_schemas::Label;

/// The Kafka header on a record that may repeat one produced before. Its
/// value is not read; its presence is the mark.
pub const MAYBE_REPEAT_HEADER: &str = "tidings-maybe-repeat";

/// The headers that mark a record produced as one that may repeat.
pub fn maybe_repeat_headers() -> OwnedHeaders {
    OwnedHeaders::new().insert(Header {
        key: MAYBE_REPEAT_HEADER,
        value: Some("1"),
    })
}

/// Whether `message` carries `label` (name and value).
pub fn is_labelled(message: &impl Message, (key, value): Label) -> bool {
    message.headers().is_some_and(|h| {
        h.iter()
            .any(|h| h.key == key && h.value == Some(value.as_bytes()))
    })
}

/// Whether `message` carries the [`MAYBE_REPEAT_HEADER`].
pub fn is_marked(message: &impl Message) -> bool {
    message
        .headers()
        .is_some_and(|h| h.iter().any(|h| h.key == MAYBE_REPEAT_HEADER))
}

/// Whether a record may repeat one handled or produced before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Handling {
    /// New: beyond the end of its partition when this member was given it,
    /// and not marked by its producer.
    #[default]
    First,
    /// Perhaps handled before: read again after a rebalance or restart, or
    /// produced again ([`MAYBE_REPEAT_HEADER`]).
    MaybeRepeat,
}

/// Where each of this member's partitions ended when the member was given
/// it. As many entries as partitions assigned: revoked ones are forgotten.
/// By topic, then partition: looked up per record by `&str`, without
/// allocating.
#[derive(Debug, Default)]
pub(crate) struct Frontiers {
    end_when_assigned: HashMap<String, HashMap<i32, i64>>,
}

impl Frontiers {
    /// How a record at `offset` of `topic`/`partition` is to be handled;
    /// `marked`: it carries the header.
    pub(crate) fn handling(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        marked: bool,
    ) -> Handling {
        let beyond = self.end(topic, partition).is_some_and(|end| offset >= end);
        if beyond && !marked {
            Handling::First
        } else {
            Handling::MaybeRepeat
        }
    }

    /// Which of `partitions` have no known end yet.
    pub(crate) fn unknown<'a>(
        &self,
        partitions: impl IntoIterator<Item = (&'a str, i32)>,
    ) -> Vec<(String, i32)> {
        let mut unknown: Vec<(String, i32)> = partitions
            .into_iter()
            .filter(|(t, p)| self.end(t, *p).is_none())
            .map(|(t, p)| (t.to_owned(), p))
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        unknown
    }

    fn end(&self, topic: &str, partition: i32) -> Option<i64> {
        self.end_when_assigned
            .get(topic)
            .and_then(|ends| ends.get(&partition))
            .copied()
    }

    pub(crate) fn set(&mut self, topic: String, partition: i32, end: i64) {
        self.end_when_assigned
            .entry(topic)
            .or_default()
            .insert(partition, end);
    }

    /// Forgets revoked partitions: if one comes back, a new owner may have
    /// handled more of it meanwhile.
    pub(crate) fn forget(&mut self, revoked: &[(String, i32)]) {
        for (topic, partition) in revoked {
            if let Some(ends) = self.end_when_assigned.get_mut(topic) {
                ends.remove(partition);
                if ends.is_empty() {
                    self.end_when_assigned.remove(topic);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_below_the_end_when_assigned_may_repeat() {
        let mut f = Frontiers::default();
        // Unknown end: every record may repeat.
        assert_eq!(f.handling("t", 0, 1_000, false), Handling::MaybeRepeat);
        assert_eq!(f.unknown([("t", 0), ("t", 1), ("t", 0)]).len(), 2);
        f.set("t".into(), 0, 10);
        assert_eq!(f.unknown([("t", 0), ("t", 1)]), [("t".to_owned(), 1)]);
        assert_eq!(f.handling("t", 0, 9, false), Handling::MaybeRepeat);
        assert_eq!(f.handling("t", 0, 10, false), Handling::First);
        // Marked by its producer: whatever the offset.
        assert_eq!(f.handling("t", 0, 10, true), Handling::MaybeRepeat);
        // Another partition, another topic: unknown.
        assert_eq!(f.handling("t", 1, 10, false), Handling::MaybeRepeat);
        assert_eq!(f.handling("u", 0, 10, false), Handling::MaybeRepeat);
        // Revoked: unknown again.
        f.forget(&[("t".into(), 0)]);
        assert_eq!(f.handling("t", 0, 10, false), Handling::MaybeRepeat);
    }
}
