//! The catalog of Avro schemas this build writes, one per record type.
//!
//! Schemas live as `.avsc` files in `schemas/avro/` so analytics jobs and
//! other languages read the same files we compile in. Each has a fixed local
//! schema id, used in the Confluent wire format when no schema registry is
//! configured; with a registry, ids come from the registry instead and the
//! subject is the record's full name (Confluent's RecordNameStrategy, because
//! one record type, `Delivery`, travels on several topics).

use std::sync::OnceLock;

use apache_avro::Schema;
use serde::{
    Deserializer, Serialize, Serializer,
    de::{self, DeserializeOwned, SeqAccess, Visitor},
    ser::SerializeTuple as _,
};

use crate::records::{
    DeadLetter, Delivery, FanoutBatch, FollowChanged, InboxEvent, NotificationRequest,
    PostPublished, PostReaction, PostRevised, TrackingEvent,
};

/// One schema of the catalog.
#[derive(Debug)]
pub struct CatalogEntry {
    /// Full Avro name, also the registry subject.
    pub full_name: &'static str,
    /// File name under `schemas/avro/`.
    pub file: &'static str,
    /// The schema id written when no registry is configured.
    pub local_id: u32,
    /// The `.avsc` text.
    pub source: &'static str,
}

macro_rules! entry {
    ($full:literal, $file:literal, $id:literal) => {
        CatalogEntry {
            full_name: $full,
            file: $file,
            local_id: $id,
            source: include_str!(concat!("../avro/", $file)),
        }
    };
}

/// Every schema, in local-id order. Ids are never reused: a new record type
/// takes the next number.
pub static CATALOG: &[CatalogEntry] = &[
    entry!(
        "tidings.v1.NotificationRequest",
        "notification_request.avsc",
        1
    ),
    entry!("tidings.v1.Delivery", "delivery.avsc", 2),
    entry!("tidings.v1.DeadLetter", "dead_letter.avsc", 3),
    entry!("tidings.v1.TrackingEvent", "tracking_event.avsc", 4),
    entry!("tidings.v1.PostPublished", "post_published.avsc", 5),
    entry!("tidings.v1.FanoutBatch", "fanout_batch.avsc", 6),
    entry!("tidings.v1.InboxEvent", "inbox_event.avsc", 7),
    entry!("tidings.v1.PostReaction", "post_reaction.avsc", 8),
    entry!("tidings.v1.PostRevised", "post_revised.avsc", 9),
    entry!("tidings.v1.FollowChanged", "follow_changed.avsc", 10),
];

/// A Kafka header (name, value) that a record carries so that a stage with
/// no use for records like it can pass them over without decoding them
/// (`Processor::PASSES_OVER` in `tidings_kafka`). Only ever a hint to skip
/// work: a record without it is decoded and handled as usual.
pub type Label = (&'static str, &'static str);

/// The label of a tracking event that counts for no template: it names
/// none, or its kind is not one the template statistics count (ACCEPTED,
/// RENDERED, ...; see `TrackingKind::template_counter`).
pub const UNCOUNTED: Label = ("tidings.template_count", "none");

/// A Rust type that is the payload of a topic.
pub trait AvroRecord: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Full Avro name of its schema in [`CATALOG`].
    const FULL_NAME: &'static str;

    /// The fields [`serialize_avro`](Self::serialize_avro) writes, in order,
    /// when it writes them as a tuple ([`in_schema_order!`]); empty when it
    /// goes through the derived `Serialize`. Unit tests hold a list to the
    /// schema's fields.
    const FIELDS_IN_ORDER: &'static [&'static str] = &[];

    /// The [`Label`] this record goes out with, if any.
    fn label(&self) -> Option<Label> {
        None
    }

    /// Writes the record to its Avro encoder: by default through its
    /// derived `Serialize`, for which apache-avro looks each field up by
    /// name and probes its map of fields that came out of order (a hash of
    /// the position) before the next; the records every notification
    /// carries use [`in_schema_order!`] instead.
    fn serialize_avro<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.serialize(serializer)
    }

    /// Reads the record from its Avro decoder when it was written with our
    /// own schema: by default through its derived `Deserialize`, which
    /// matches each field's name against the struct's; the records every
    /// notification carries use [`in_schema_order!`], which reads them as a
    /// tuple by position.
    fn deserialize_avro<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::deserialize(deserializer)
    }
}

/// Writes and reads a record as a tuple of the fields named, which must be
/// all of its schema's in the schema's order (apache-avro writes and reads
/// a record as a tuple of that length by position, with no lookup by name).
/// Implements [`AvroRecord::FIELDS_IN_ORDER`], [`AvroRecord::serialize_avro`]
/// and [`AvroRecord::deserialize_avro`].
macro_rules! in_schema_order {
    ($record:ident: $($field:ident),+ $(,)?) => {
        const FIELDS_IN_ORDER: &'static [&'static str] = &[$(stringify!($field)),+];

        fn serialize_avro<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut fields = serializer.serialize_tuple(Self::FIELDS_IN_ORDER.len())?;
            $(fields.serialize_element(&self.$field)?;)+
            fields.end()
        }

        fn deserialize_avro<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct InOrder;
            impl<'de> Visitor<'de> for InOrder {
                type Value = $record;

                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    write!(f, "the fields of {} in schema order", stringify!($record))
                }

                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<$record, A::Error> {
                    let mut read = 0;
                    $(
                        let $field = seq
                            .next_element()?
                            .ok_or_else(|| de::Error::invalid_length(read, &self))?;
                        read += 1;
                    )+
                    let _ = read;
                    Ok($record { $($field),+ })
                }
            }
            deserializer.deserialize_tuple(Self::FIELDS_IN_ORDER.len(), InOrder)
        }
    };
}

impl AvroRecord for NotificationRequest {
    const FULL_NAME: &'static str = "tidings.v1.NotificationRequest";

    in_schema_order!(
        NotificationRequest:
        notification_id,
        event_id,
        app_key,
        user_id,
        channels,
        category,
        template,
        content,
        send_at,
        expires_at,
        priority,
        collapse_id,
        data,
        accepted_at,
    );
}
impl AvroRecord for Delivery {
    const FULL_NAME: &'static str = "tidings.v1.Delivery";

    in_schema_order!(
        Delivery:
        delivery_id,
        notification_id,
        event_id,
        user_id,
        channel,
        target,
        category,
        template_name,
        template_version,
        locale,
        title,
        body,
        email_subject,
        email_html,
        email_text,
        data,
        collapse_id,
        priority,
        expires_at,
        accepted_at,
        attempt,
        not_before,
        last_error,
        action_url,
        avatar_url,
    );
}
impl AvroRecord for DeadLetter {
    const FULL_NAME: &'static str = "tidings.v1.DeadLetter";
}
impl AvroRecord for TrackingEvent {
    const FULL_NAME: &'static str = "tidings.v1.TrackingEvent";

    in_schema_order!(
        TrackingEvent:
        event_id,
        notification_id,
        user_id,
        kind,
        channel,
        target,
        template_name,
        stage,
        detail,
        at,
        dispatched_at,
    );

    fn label(&self) -> Option<Label> {
        (self.template_name.is_none() || self.kind.template_counter().is_none())
            .then_some(UNCOUNTED)
    }
}
impl AvroRecord for PostPublished {
    const FULL_NAME: &'static str = "tidings.v1.PostPublished";
}
impl AvroRecord for FanoutBatch {
    const FULL_NAME: &'static str = "tidings.v1.FanoutBatch";
}
impl AvroRecord for InboxEvent {
    const FULL_NAME: &'static str = "tidings.v1.InboxEvent";
}
impl AvroRecord for PostReaction {
    const FULL_NAME: &'static str = "tidings.v1.PostReaction";
}
impl AvroRecord for PostRevised {
    const FULL_NAME: &'static str = "tidings.v1.PostRevised";
}
impl AvroRecord for FollowChanged {
    const FULL_NAME: &'static str = "tidings.v1.FollowChanged";
}

/// A catalog entry with its parsed schema.
#[derive(Debug)]
pub struct ParsedEntry {
    pub entry: &'static CatalogEntry,
    pub schema: &'static Schema,
}

/// The catalog parsed once per process. The schemas are compiled in and
/// covered by tests, so a parse failure is a build defect, not an input error.
pub fn parsed() -> &'static [ParsedEntry] {
    static PARSED: OnceLock<Vec<ParsedEntry>> = OnceLock::new();
    PARSED.get_or_init(|| {
        CATALOG
            .iter()
            .map(|entry| {
                let schema = Schema::parse_str(entry.source).unwrap_or_else(|e| {
                    panic!("compiled-in schema {} does not parse: {e}", entry.file)
                });
                ParsedEntry {
                    entry,
                    schema: Box::leak(Box::new(schema)),
                }
            })
            .collect()
    })
}

/// The parsed entry for a full name.
pub fn lookup(full_name: &str) -> Option<&'static ParsedEntry> {
    parsed().iter().find(|p| p.entry.full_name == full_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_parses_and_its_name_matches_the_catalog() {
        for p in parsed() {
            let name = match p.schema {
                Schema::Record(r) => r.name.fullname(None),
                other => panic!("{} is not a record: {other:?}", p.entry.file),
            };
            assert_eq!(name, p.entry.full_name, "{}", p.entry.file);
        }
    }

    #[test]
    fn local_ids_are_unique() {
        let mut ids: Vec<u32> = CATALOG.iter().map(|e| e.local_id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), CATALOG.len());
    }

    #[test]
    fn tracking_events_that_count_for_no_template_are_labelled() {
        use crate::records::{TrackingEvent, TrackingKind};
        let event = |template: Option<&str>, kind| TrackingEvent {
            event_id: "e".into(),
            notification_id: "n".into(),
            user_id: "u".into(),
            kind,
            channel: None,
            target: None,
            template_name: template.map(str::to_owned),
            stage: "test".into(),
            detail: None,
            at: 0,
            dispatched_at: None,
        };
        assert_eq!(event(Some("welcome"), TrackingKind::Sent).label(), None);
        assert_eq!(event(Some("welcome"), TrackingKind::Opened).label(), None);
        assert_eq!(
            event(Some("welcome"), TrackingKind::Rendered).label(),
            Some(UNCOUNTED)
        );
        assert_eq!(
            event(Some("welcome"), TrackingKind::Accepted).label(),
            Some(UNCOUNTED)
        );
        assert_eq!(event(None, TrackingKind::Sent).label(), Some(UNCOUNTED));
    }
}
