//! Avro in the Confluent wire format: one magic byte `0`, the writer's schema
//! id as a big-endian `u32`, then the Avro binary datum. Standard Kafka
//! tooling (kcat, Kafka Connect, ksqlDB, Spark's `from_avro`) reads this.
//!
//! Without a schema registry the ids are the catalog's fixed local ids. A
//! registry-backed codec ([`AvroCodec::with_registry`]) registers the catalog
//! at startup and writes the ids the registry assigned; on reading an id it
//! does not know, [`AvroCodec::decode_async`] fetches that writer schema from
//! the registry once. Records written with an older schema are resolved into
//! the current Rust type by Avro schema resolution.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
};

use apache_avro::{Schema, reader::datum::GenericDatumReader, writer::datum::GenericDatumWriter};

use crate::{
    catalog::{self, AvroRecord},
    registry::{RegistryError, SchemaRegistry, subject_of},
};

const MAGIC: u8 = 0;
const HEADER_LEN: usize = 5;

/// Why a record could not be encoded or decoded. Apart from a registry that
/// could not be reached (see [`CodecError::is_retriable`]), none of these get
/// better by retrying the same bytes: a record that fails to decode belongs
/// on the dead-letter topic.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("record of {len} bytes is too short for the Confluent wire format (needs at least 5)")]
    TooShort { len: usize },
    #[error("unknown magic byte {0} (expected 0, the Confluent wire format)")]
    BadMagic(u8),
    #[error("unknown writer schema id {0}; it is neither in the catalog nor registered")]
    UnknownSchemaId(u32),
    #[error("{full_name} is not in the schema catalog")]
    NotInCatalog { full_name: &'static str },
    #[error("writer schema id {id} is a {found}, not the expected {expected}")]
    WrongRecordType {
        id: u32,
        found: String,
        expected: &'static str,
    },
    #[error("cannot encode {full_name}: {source}")]
    Encode {
        full_name: &'static str,
        source: Box<apache_avro::Error>,
    },
    #[error("cannot decode {full_name} written with schema id {id}: {source}")]
    Decode {
        full_name: &'static str,
        id: u32,
        source: Box<apache_avro::Error>,
    },
    #[error("invalid writer schema for id {id}: {source}")]
    BadWriterSchema {
        id: u32,
        source: Box<apache_avro::Error>,
    },
    /// The writer schema id is not known locally and asking the registry
    /// for it failed.
    #[error("cannot get writer schema id {id} from the schema registry: {source}")]
    Registry { id: u32, source: Box<RegistryError> },
}

impl CodecError {
    /// Whether decoding the same bytes may succeed later: only when the
    /// registry was unreachable or failed (5xx). Everything else is the
    /// record's fault and belongs on the dead-letter topic.
    pub fn is_retriable(&self) -> bool {
        matches!(self, CodecError::Registry { source, .. } if source.is_retriable())
    }
}

/// The schema we write for one record type, with its id.
struct WriteSide {
    id: u32,
    schema: &'static Schema,
    writer: GenericDatumWriter<'static>,
    /// Records written with this same schema decode straight through it:
    /// built once, because building one resolves the schema's names (a
    /// map of every named type) and cost more than many a decode.
    reader: GenericDatumReader<'static>,
}

/// Encodes and decodes every topic's records. Cheap to clone.
#[derive(Clone)]
pub struct AvroCodec {
    inner: Arc<Inner>,
}

struct Inner {
    write: HashMap<&'static str, WriteSide>,
    /// Writer schemas by id: ours, plus any learned from a registry.
    by_id: RwLock<HashMap<u32, &'static Schema>>,
    /// Where unknown writer schema ids are looked up; none for a local codec.
    registry: Option<SchemaRegistry>,
    /// One cell per id being fetched right now, so a burst of records with a
    /// new id (a whole poll batch) costs one registry request, not one each.
    /// Entries are removed once the fetch ends; the result lives in `by_id`.
    fetching: Mutex<HashMap<u32, Arc<tokio::sync::OnceCell<()>>>>,
}

impl std::fmt::Debug for AvroCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroCodec")
            .field("record_types", &self.inner.write.len())
            .field("registry", &self.inner.registry)
            .finish()
    }
}

impl AvroCodec {
    /// A codec that writes the catalog's local schema ids (no registry).
    pub fn local() -> Self {
        Self::with_ids(|entry| entry.local_id)
    }

    /// A codec whose write ids come from `id_of` (e.g. ids a schema registry
    /// assigned when the catalog was registered).
    pub fn with_ids(id_of: impl Fn(&catalog::CatalogEntry) -> u32) -> Self {
        Self::build(id_of, None)
    }

    /// A codec backed by the Confluent-compatible schema registry at `url`
    /// (`https://key:secret@host` for basic auth).
    ///
    /// Registers every catalog schema under its record name (see
    /// [`crate::registry`]), so a build whose schemas break the registry's
    /// compatibility rule fails here, naming the subject, before it writes
    /// anything. Writes the ids the registry assigned; reads ids it does not
    /// know through [`AvroCodec::decode_async`].
    pub async fn with_registry(url: &str) -> Result<Self, RegistryError> {
        Self::with_registry_client(SchemaRegistry::new(url)?).await
    }

    /// [`AvroCodec::with_registry`] with a client already built.
    pub async fn with_registry_client(registry: SchemaRegistry) -> Result<Self, RegistryError> {
        let mut ids = HashMap::new();
        // One at a time: six requests once per process, and the first
        // refusal is the error to report.
        for parsed in catalog::parsed() {
            let entry = parsed.entry;
            let id = registry.register(subject_of(entry), entry.source).await?;
            ids.insert(entry.full_name, id);
        }
        // Every catalog entry was registered just above.
        Ok(Self::build(|entry| ids[entry.full_name], Some(registry)))
    }

    /// The registry this codec reads unknown ids from, if any.
    pub fn registry(&self) -> Option<&SchemaRegistry> {
        self.inner.registry.as_ref()
    }

    fn build(
        id_of: impl Fn(&catalog::CatalogEntry) -> u32,
        registry: Option<SchemaRegistry>,
    ) -> Self {
        let mut write = HashMap::new();
        let mut by_id = HashMap::new();
        for parsed in catalog::parsed() {
            let id = id_of(parsed.entry);
            let writer = GenericDatumWriter::builder(parsed.schema)
                .build()
                .unwrap_or_else(|e| panic!("catalog schema {} rejected: {e}", parsed.entry.file));
            let reader = GenericDatumReader::builder(parsed.schema)
                .build()
                .unwrap_or_else(|e| panic!("catalog schema {} rejected: {e}", parsed.entry.file));
            write.insert(
                parsed.entry.full_name,
                WriteSide {
                    id,
                    schema: parsed.schema,
                    writer,
                    reader,
                },
            );
            by_id.insert(id, parsed.schema);
        }
        Self {
            inner: Arc::new(Inner {
                write,
                by_id: RwLock::new(by_id),
                registry,
                fetching: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Teaches the codec a writer schema it did not write itself, e.g. an older
    /// version fetched from a registry.
    pub fn add_writer_schema(&self, id: u32, schema_json: &str) -> Result<(), CodecError> {
        let schema = Schema::parse_str(schema_json).map_err(|e| CodecError::BadWriterSchema {
            id,
            source: Box::new(e),
        })?;
        // Writer schemas are few and live as long as the process.
        let schema: &'static Schema = Box::leak(Box::new(schema));
        self.inner
            .by_id
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, schema);
        Ok(())
    }

    /// The id this codec writes `T` with.
    pub fn schema_id<T: AvroRecord>(&self) -> Result<u32, CodecError> {
        Ok(self.write_side::<T>()?.id)
    }

    pub fn encode<T: AvroRecord>(&self, record: &T) -> Result<Vec<u8>, CodecError> {
        let side = self.write_side::<T>()?;
        let mut out = Vec::with_capacity(256);
        out.push(MAGIC);
        out.extend_from_slice(&side.id.to_be_bytes());
        side.writer
            .write_ser(&mut out, &ForAvro(record))
            .map_err(|e| CodecError::Encode {
                full_name: T::FULL_NAME,
                source: Box::new(e),
            })?;
        Ok(out)
    }

    pub fn decode<T: AvroRecord>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let id = schema_id_of(bytes)?;
        let mut body = &bytes[HEADER_LEN..];
        let ours = self.write_side::<T>()?;
        let decode_err = |e| CodecError::Decode {
            full_name: T::FULL_NAME,
            id,
            source: Box::new(e),
        };
        if id == ours.id {
            // Same schema on both sides: decode straight into T.
            return ours
                .reader
                .read_deser::<FromAvro<T>>(&mut body)
                .map(|r| r.0)
                .map_err(decode_err);
        }
        let writer_schema = self.writer_schema(id)?;
        check_same_record(id, writer_schema, T::FULL_NAME)?;
        let reader = GenericDatumReader::builder(writer_schema)
            .reader_schema(ours.schema)
            .build()
            .map_err(decode_err)?;
        let value = reader.read_value(&mut body).map_err(decode_err)?;
        apache_avro::from_value(&value).map_err(decode_err)
    }

    /// [`AvroCodec::decode`], except that a writer schema id the codec does
    /// not know is fetched from the registry (once per id per process; every
    /// later record with it decodes from memory). On a codec without a
    /// registry this is `decode`.
    pub async fn decode_async<T: AvroRecord>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let id = schema_id_of(bytes)?;
        if let Some(registry) = &self.inner.registry
            && !self.knows(id)
        {
            self.fetch_writer_schema(registry, id).await?;
        }
        self.decode(bytes)
    }

    async fn fetch_writer_schema(
        &self,
        registry: &SchemaRegistry,
        id: u32,
    ) -> Result<(), CodecError> {
        let cell = {
            let mut fetching = self
                .inner
                .fetching
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            fetching.entry(id).or_default().clone()
        };
        let result = cell
            .get_or_try_init(|| async {
                // A fetch that finished between our check and taking the
                // cell (whose entry it then removed) has left the schema
                // here already.
                if self.knows(id) {
                    return Ok(());
                }
                let text = registry
                    .schema_by_id(id)
                    .await
                    .map_err(|e| CodecError::Registry {
                        id,
                        source: Box::new(e),
                    })?;
                self.add_writer_schema(id, &text)
            })
            .await
            .map(|_| ());
        // Done either way: a success is in `by_id`, and a failure is not
        // remembered, so the next record with this id asks again (the
        // registry may have been down, or a replica behind).
        let mut fetching = self
            .inner
            .fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if fetching.get(&id).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            fetching.remove(&id);
        }
        result
    }

    fn knows(&self, id: u32) -> bool {
        self.inner
            .by_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id)
    }

    fn writer_schema(&self, id: u32) -> Result<&'static Schema, CodecError> {
        self.inner
            .by_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied()
            .ok_or(CodecError::UnknownSchemaId(id))
    }

    fn write_side<T: AvroRecord>(&self) -> Result<&WriteSide, CodecError> {
        self.inner
            .write
            .get(T::FULL_NAME)
            .ok_or(CodecError::NotInCatalog {
                full_name: T::FULL_NAME,
            })
    }
}

/// The schema id in a Confluent wire-format header.
pub fn schema_id_of(bytes: &[u8]) -> Result<u32, CodecError> {
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::TooShort { len: bytes.len() });
    }
    if bytes[0] != MAGIC {
        return Err(CodecError::BadMagic(bytes[0]));
    }
    Ok(u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]))
}

/// A record as its Avro encoder takes it: [`AvroRecord::serialize_avro`].
pub struct ForAvro<'a, T>(pub &'a T);

impl<T: AvroRecord> serde::Serialize for ForAvro<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_avro(serializer)
    }
}

/// A record as its Avro decoder gives it: [`AvroRecord::deserialize_avro`].
pub struct FromAvro<T>(pub T);

impl<'de, T: AvroRecord> serde::Deserialize<'de> for FromAvro<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize_avro(deserializer).map(FromAvro)
    }
}

fn check_same_record(id: u32, writer: &Schema, expected: &'static str) -> Result<(), CodecError> {
    match writer {
        Schema::Record(r) if r.name.fullname(None) == expected => Ok(()),
        Schema::Record(r) => Err(CodecError::WrongRecordType {
            id,
            found: r.name.fullname(None),
            expected,
        }),
        other => Err(CodecError::WrongRecordType {
            id,
            found: format!("{other:?}"),
            expected,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::records::*;

    fn request() -> NotificationRequest {
        NotificationRequest {
            notification_id: "n-1".into(),
            event_id: "e-1".into(),
            app_key: "billing".into(),
            user_id: "u-1".into(),
            channels: vec!["ios".into(), "email".into()],
            category: Some("billing".into()),
            template: Some(TemplateRef {
                name: "invoice".into(),
                version: None,
                params: BTreeMap::from([("amount".into(), "12.50".into())]),
            }),
            content: None,
            send_at: Some(1_700_000_000_000),
            expires_at: None,
            priority: Priority::High,
            collapse_id: None,
            data: BTreeMap::from([("deep_link".into(), "app://invoice/1".into())]),
            accepted_at: 1_700_000_000_001,
        }
    }

    fn delivery() -> Delivery {
        Delivery {
            delivery_id: "d-1".into(),
            notification_id: "n-1".into(),
            event_id: "e-1".into(),
            user_id: "u-1".into(),
            channel: "ios".into(),
            target: "a".repeat(64),
            category: None,
            template_name: Some("invoice".into()),
            template_version: Some(3),
            locale: Some("fr-FR".into()),
            title: Some("Facture".into()),
            body: Some("12,50 €".into()),
            email_subject: None,
            email_html: None,
            email_text: None,
            data: BTreeMap::new(),
            collapse_id: Some("invoice".into()),
            priority: Priority::Normal,
            expires_at: None,
            accepted_at: 1,
            attempt: 2,
            not_before: Some(5),
            last_error: Some("503".into()),
            action_url: None,
            avatar_url: None,
        }
    }

    /// The records written as tuples ([`AvroRecord::FIELDS_IN_ORDER`]) list
    /// every field of their schema in its order, encode to the same bytes as
    /// through their derived `Serialize`, and decode by position to what
    /// their derived `Deserialize` reads, with every optional field set and
    /// with none.
    #[test]
    fn records_written_in_schema_order_encode_as_by_name() {
        fn check<T: AvroRecord + Clone + PartialEq + std::fmt::Debug>(samples: &[T]) {
            let codec = AvroCodec::local();
            let side = codec.write_side::<T>().unwrap();
            let Schema::Record(schema) = side.schema else {
                panic!("{} is not a record", T::FULL_NAME)
            };
            let names: Vec<&str> = schema.fields.iter().map(|f| f.name.as_str()).collect();
            assert_eq!(T::FIELDS_IN_ORDER, names.as_slice(), "{}", T::FULL_NAME);
            for sample in samples {
                let by_name = side.writer.write_ser_to_vec(sample).unwrap();
                let in_order = side.writer.write_ser_to_vec(&ForAvro(sample)).unwrap();
                assert_eq!(in_order, by_name, "{} {sample:?}", T::FULL_NAME);
                // And read back by position as by name.
                let read_by_name: T = side.reader.read_deser(&mut &by_name[..]).unwrap();
                let FromAvro(read_in_order) = side
                    .reader
                    .read_deser::<FromAvro<T>>(&mut &by_name[..])
                    .unwrap();
                assert_eq!(read_in_order, read_by_name, "{}", T::FULL_NAME);
                assert_eq!(&read_in_order, sample, "{}", T::FULL_NAME);
            }
        }
        let mut bare = request();
        bare.channels.clear();
        bare.category = None;
        bare.template = None;
        bare.content = Some(RawContent {
            title: Some("Hi".into()),
            ..RawContent::default()
        });
        bare.send_at = None;
        bare.data.clear();
        check(&[request(), bare]);
        let full = Delivery {
            category: Some("billing".into()),
            email_subject: Some("s".into()),
            email_html: Some("<p>h</p>".into()),
            email_text: Some("t".into()),
            collapse_id: Some("c".into()),
            expires_at: Some(1),
            not_before: Some(2),
            last_error: Some("503".into()),
            action_url: Some("https://example.com/a".into()),
            avatar_url: Some("https://example.com/b.png".into()),
            ..delivery()
        };
        let bare = Delivery {
            template_name: None,
            template_version: None,
            locale: None,
            title: None,
            body: None,
            data: BTreeMap::new(),
            ..delivery()
        };
        check(&[delivery(), full, bare]);
        let event = TrackingEvent {
            event_id: "t-1".into(),
            notification_id: "n-1".into(),
            user_id: "u-1".into(),
            kind: TrackingKind::Sent,
            channel: Some("ios".into()),
            target: Some("a".repeat(64)),
            template_name: Some("invoice".into()),
            stage: "sender.ios".into(),
            detail: Some("apns".into()),
            at: 7,
            dispatched_at: Some(6),
        };
        let bare = TrackingEvent {
            kind: TrackingKind::Accepted,
            channel: None,
            target: None,
            template_name: None,
            detail: None,
            dispatched_at: None,
            ..event.clone()
        };
        check(&[event, bare]);
    }

    #[test]
    fn every_record_type_round_trips() {
        let codec = AvroCodec::local();
        let r = request();
        assert_eq!(
            codec
                .decode::<NotificationRequest>(&codec.encode(&r).unwrap())
                .unwrap(),
            r
        );
        let d = delivery();
        assert_eq!(
            codec
                .decode::<Delivery>(&codec.encode(&d).unwrap())
                .unwrap(),
            d
        );
        let dl = DeadLetter {
            source_topic: "tidings.notify.requests".into(),
            source_partition: 3,
            source_offset: 42,
            key: Some(b"u-1".to_vec()),
            payload: vec![0, 1, 2, 255],
            stage: "enricher".into(),
            reason: "template missing".into(),
            retriable: false,
            attempts: 1,
            failed_at: 9,
        };
        assert_eq!(
            codec
                .decode::<DeadLetter>(&codec.encode(&dl).unwrap())
                .unwrap(),
            dl
        );
        let t = TrackingEvent {
            event_id: "t-1".into(),
            notification_id: "n-1".into(),
            user_id: "u-1".into(),
            kind: TrackingKind::DeadLettered,
            channel: Some("sms".into()),
            target: None,
            template_name: None,
            stage: "sender.sms".into(),
            detail: None,
            at: 7,
            dispatched_at: None,
        };
        assert_eq!(
            codec
                .decode::<TrackingEvent>(&codec.encode(&t).unwrap())
                .unwrap(),
            t
        );
        let p = PostPublished {
            post_id: "p".into(),
            author_id: "a".into(),
            body: "hello".into(),
            media_urls: vec!["https://cdn/x.jpg".into()],
            audience: Some(vec!["b".into()]),
            created_at: 1,
        };
        assert_eq!(
            codec
                .decode::<PostPublished>(&codec.encode(&p).unwrap())
                .unwrap(),
            p
        );
        let f = FanoutBatch {
            post_id: "p".into(),
            author_id: "a".into(),
            created_at: 1,
            recipients: vec!["b".into(), "c".into()],
            batch_index: 0,
        };
        assert_eq!(
            codec
                .decode::<FanoutBatch>(&codec.encode(&f).unwrap())
                .unwrap(),
            f
        );
        let reaction = PostReaction {
            post_id: "p".into(),
            post_author_id: "a".into(),
            user_id: "b".into(),
            kind: ReactionKind::Reply,
            reply_id: Some("r".into()),
            reply_body: Some("nice".into()),
            at: 1,
        };
        assert_eq!(
            codec
                .decode::<PostReaction>(&codec.encode(&reaction).unwrap())
                .unwrap(),
            reaction
        );
    }

    #[test]
    fn header_is_the_confluent_wire_format() {
        let codec = AvroCodec::local();
        let bytes = codec.encode(&delivery()).unwrap();
        assert_eq!(bytes[0], 0);
        assert_eq!(schema_id_of(&bytes).unwrap(), 2);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let codec = AvroCodec::local();
        assert!(matches!(
            codec.decode::<Delivery>(&[0, 0]),
            Err(CodecError::TooShort { .. })
        ));
        assert!(matches!(
            codec.decode::<Delivery>(&[1, 0, 0, 0, 2, 0]),
            Err(CodecError::BadMagic(1))
        ));
        assert!(matches!(
            codec.decode::<Delivery>(&[0, 0, 0, 0, 99, 0]),
            Err(CodecError::UnknownSchemaId(99))
        ));
        // A truncated body.
        let bytes = codec.encode(&delivery()).unwrap();
        assert!(matches!(
            codec.decode::<Delivery>(&bytes[..bytes.len() / 2]),
            Err(CodecError::Decode { .. })
        ));
        // Another record type's bytes.
        let req = codec.encode(&request()).unwrap();
        let mut relabelled = req.clone();
        relabelled[4] = 2; // claims to be a Delivery
        assert!(codec.decode::<Delivery>(&relabelled).is_err());
        assert!(matches!(
            codec.decode::<Delivery>(&req),
            Err(CodecError::WrongRecordType { .. })
        ));
    }

    #[test]
    fn records_written_with_an_older_schema_are_resolved() {
        // An older Delivery without the fields added later (`last_error`,
        // `not_before`), as another service might still be writing.
        let old = r#"{"type":"record","name":"Delivery","namespace":"tidings.v1","fields":[
            {"name":"delivery_id","type":"string"},{"name":"notification_id","type":"string"},
            {"name":"event_id","type":"string"},{"name":"user_id","type":"string"},
            {"name":"channel","type":"string"},{"name":"target","type":"string"},
            {"name":"accepted_at","type":"long"}]}"#;
        let codec = AvroCodec::local();
        codec.add_writer_schema(1002, old).unwrap();
        let old_schema = Schema::parse_str(old).unwrap();
        let mut rec = apache_avro::types::Record::new(&old_schema).unwrap();
        for f in [
            "delivery_id",
            "notification_id",
            "event_id",
            "user_id",
            "channel",
            "target",
        ] {
            rec.put(f, format!("{f}-v"));
        }
        rec.put("accepted_at", 11i64);
        let body = GenericDatumWriter::builder(&old_schema)
            .build()
            .unwrap()
            .write_value_to_vec(rec)
            .unwrap();
        let mut bytes = vec![0, 0, 0, 0x03, 0xEA];
        bytes.extend(body);
        let d: Delivery = codec.decode(&bytes).unwrap();
        assert_eq!(d.target, "target-v");
        assert_eq!(d.attempt, 0);
        assert_eq!(d.last_error, None);
        assert_eq!(d.accepted_at, 11);
    }
}
