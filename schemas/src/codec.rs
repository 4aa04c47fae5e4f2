//! Avro in the Confluent wire format: one magic byte `0`, the writer's schema
//! id as a big-endian `u32`, then the Avro binary datum. Standard Kafka
//! tooling (kcat, Kafka Connect, ksqlDB, Spark's `from_avro`) reads this.
//!
//! Without a schema registry the ids are the catalog's fixed local ids. A
//! registry-backed codec learns other ids (see [`AvroCodec::add_writer_schema`]);
//! records written with an older schema are resolved into the current Rust
//! type by Avro schema resolution.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use apache_avro::{
    Schema, reader::datum::GenericDatumReader, writer::datum::GenericDatumWriter,
};

use crate::catalog::{self, AvroRecord};

const MAGIC: u8 = 0;
const HEADER_LEN: usize = 5;

/// Why a record could not be encoded or decoded. None of these get better by
/// retrying the same bytes: a record that fails to decode belongs on the
/// dead-letter topic.
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
    WrongRecordType { id: u32, found: String, expected: &'static str },
    #[error("cannot encode {full_name}: {source}")]
    Encode { full_name: &'static str, source: Box<apache_avro::Error> },
    #[error("cannot decode {full_name} written with schema id {id}: {source}")]
    Decode { full_name: &'static str, id: u32, source: Box<apache_avro::Error> },
    #[error("invalid writer schema for id {id}: {source}")]
    BadWriterSchema { id: u32, source: Box<apache_avro::Error> },
}

/// The schema we write for one record type, with its id.
struct WriteSide {
    id: u32,
    schema: &'static Schema,
    writer: GenericDatumWriter<'static>,
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
}

impl std::fmt::Debug for AvroCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroCodec").field("record_types", &self.inner.write.len()).finish()
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
        let mut write = HashMap::new();
        let mut by_id = HashMap::new();
        for parsed in catalog::parsed() {
            let id = id_of(parsed.entry);
            let writer = GenericDatumWriter::builder(parsed.schema)
                .build()
                .unwrap_or_else(|e| panic!("catalog schema {} rejected: {e}", parsed.entry.file));
            write.insert(parsed.entry.full_name, WriteSide { id, schema: parsed.schema, writer });
            by_id.insert(id, parsed.schema);
        }
        Self { inner: Arc::new(Inner { write, by_id: RwLock::new(by_id) }) }
    }

    /// Teaches the codec a writer schema it did not write itself, e.g. an older
    /// version fetched from a registry.
    pub fn add_writer_schema(&self, id: u32, schema_json: &str) -> Result<(), CodecError> {
        let schema = Schema::parse_str(schema_json)
            .map_err(|e| CodecError::BadWriterSchema { id, source: Box::new(e) })?;
        // Writer schemas are few and live as long as the process.
        let schema: &'static Schema = Box::leak(Box::new(schema));
        self.inner.by_id.write().unwrap_or_else(|p| p.into_inner()).insert(id, schema);
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
            .write_ser(&mut out, record)
            .map_err(|e| CodecError::Encode { full_name: T::FULL_NAME, source: Box::new(e) })?;
        Ok(out)
    }

    pub fn decode<T: AvroRecord>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let id = schema_id_of(bytes)?;
        let mut body = &bytes[HEADER_LEN..];
        let ours = self.write_side::<T>()?;
        let decode_err = |e| CodecError::Decode { full_name: T::FULL_NAME, id, source: Box::new(e) };
        if id == ours.id {
            // Same schema on both sides: decode straight into T.
            let reader = GenericDatumReader::builder(ours.schema).build().map_err(decode_err)?;
            return reader.read_deser(&mut body).map_err(decode_err);
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
            .ok_or(CodecError::NotInCatalog { full_name: T::FULL_NAME })
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

fn check_same_record(id: u32, writer: &Schema, expected: &'static str) -> Result<(), CodecError> {
    match writer {
        Schema::Record(r) if r.name.fullname(None) == expected => Ok(()),
        Schema::Record(r) => {
            Err(CodecError::WrongRecordType { id, found: r.name.fullname(None), expected })
        }
        other => Err(CodecError::WrongRecordType { id, found: format!("{other:?}"), expected }),
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
        }
    }

    #[test]
    fn every_record_type_round_trips() {
        let codec = AvroCodec::local();
        let r = request();
        assert_eq!(codec.decode::<NotificationRequest>(&codec.encode(&r).unwrap()).unwrap(), r);
        let d = delivery();
        assert_eq!(codec.decode::<Delivery>(&codec.encode(&d).unwrap()).unwrap(), d);
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
        assert_eq!(codec.decode::<DeadLetter>(&codec.encode(&dl).unwrap()).unwrap(), dl);
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
        };
        assert_eq!(codec.decode::<TrackingEvent>(&codec.encode(&t).unwrap()).unwrap(), t);
        let p = PostPublished {
            post_id: "p".into(),
            author_id: "a".into(),
            body: "hello".into(),
            media_urls: vec!["https://cdn/x.jpg".into()],
            audience: Some(vec!["b".into()]),
            created_at: 1,
        };
        assert_eq!(codec.decode::<PostPublished>(&codec.encode(&p).unwrap()).unwrap(), p);
        let f = FanoutBatch {
            post_id: "p".into(),
            author_id: "a".into(),
            created_at: 1,
            recipients: vec!["b".into(), "c".into()],
            batch_index: 0,
        };
        assert_eq!(codec.decode::<FanoutBatch>(&codec.encode(&f).unwrap()).unwrap(), f);
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
        assert!(matches!(codec.decode::<Delivery>(&[0, 0]), Err(CodecError::TooShort { .. })));
        assert!(matches!(codec.decode::<Delivery>(&[1, 0, 0, 0, 2, 0]), Err(CodecError::BadMagic(1))));
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
        for f in ["delivery_id", "notification_id", "event_id", "user_id", "channel", "target"] {
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
