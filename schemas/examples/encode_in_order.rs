//! How long apache-avro takes to encode and decode the records every
//! notification carries, through their derived `Serialize` and `Deserialize`
//! (fields looked up or matched by name) and through
//! `AvroRecord::serialize_avro` and `deserialize_avro` (a tuple in schema
//! order), in the same run. See docs/benchmarks.md (sessions 17 and 18).
//!
//! ```sh
//! cargo run --release -p tidings-schemas --example encode_in_order
//! ```

use std::time::Instant;

use apache_avro::{reader::datum::GenericDatumReader, writer::datum::GenericDatumWriter};
use tidings_schemas::{
    catalog::{AvroRecord, lookup},
    codec::{ForAvro, FromAvro},
    records::{Delivery, NotificationRequest, Priority, RawContent, TrackingEvent, TrackingKind},
};

const ROUNDS: usize = 3;
const ENCODES: u32 = 1_000_000;

/// Nanoseconds per call of `read`, `ENCODES` times.
fn per_decode(mut read: impl FnMut()) -> f64 {
    let started = Instant::now();
    for _ in 0..ENCODES {
        read();
    }
    started.elapsed().as_nanos() as f64 / f64::from(ENCODES)
}

/// Nanoseconds per encode of `record` through `write`, `ENCODES` times.
fn per_encode(mut write: impl FnMut(&mut Vec<u8>)) -> f64 {
    let mut out = Vec::with_capacity(1024);
    let started = Instant::now();
    for _ in 0..ENCODES {
        out.clear();
        write(&mut out);
    }
    started.elapsed().as_nanos() as f64 / f64::from(ENCODES)
}

fn compare<T: AvroRecord>(name: &str, record: &T) {
    let schema = lookup(T::FULL_NAME).expect("in the catalog").schema;
    let writer = GenericDatumWriter::builder(schema).build().expect("writer");
    let reader = GenericDatumReader::builder(schema).build().expect("reader");
    let bytes = writer.write_ser_to_vec(record).expect("encodes");
    for round in 1..=ROUNDS {
        let by_name = per_encode(|out| {
            writer.write_ser(out, record).expect("encodes");
        });
        let in_order = per_encode(|out| {
            writer.write_ser(out, &ForAvro(record)).expect("encodes");
        });
        println!(
            "{name:<20} round {round}: encode by name {by_name:>5.0} ns, in schema order {in_order:>5.0} ns ({:.2})",
            in_order / by_name
        );
        let by_name = per_decode(|| {
            let _: T = reader.read_deser(&mut &bytes[..]).expect("decodes");
        });
        let in_order = per_decode(|| {
            let _: FromAvro<T> = reader.read_deser(&mut &bytes[..]).expect("decodes");
        });
        println!(
            "{name:<20} round {round}: decode by name {by_name:>5.0} ns, in schema order {in_order:>5.0} ns ({:.2})",
            in_order / by_name
        );
    }
}

fn main() {
    let notification_id = "5b1c2d3e-0000-5000-8000-000000000000";
    let request = NotificationRequest {
        notification_id: notification_id.into(),
        event_id: "evt-1".into(),
        app_key: "bench".into(),
        user_id: "user-12345".into(),
        channels: vec!["ios".into()],
        category: None,
        template: None,
        content: Some(RawContent {
            title: Some("Hello".into()),
            body: Some("A bench notification".into()),
            ..RawContent::default()
        }),
        send_at: None,
        expires_at: None,
        priority: Priority::High,
        collapse_id: None,
        data: Default::default(),
        accepted_at: 1,
    };
    let delivery = Delivery {
        delivery_id: "0193a1b2-0000-7000-8000-000000000001".into(),
        notification_id: notification_id.into(),
        event_id: "evt-1".into(),
        user_id: "user-12345".into(),
        channel: "ios".into(),
        target: "a".repeat(64),
        category: None,
        template_name: None,
        template_version: None,
        locale: None,
        title: Some("Hello".into()),
        body: Some("A bench notification".into()),
        email_subject: None,
        email_html: None,
        email_text: None,
        data: Default::default(),
        collapse_id: None,
        priority: Priority::High,
        expires_at: None,
        accepted_at: 1,
        attempt: 0,
        not_before: None,
        last_error: None,
        action_url: None,
        avatar_url: None,
    };
    let event = TrackingEvent {
        event_id: "0193a1b2-0000-7000-8000-000000000002".into(),
        notification_id: notification_id.into(),
        user_id: "user-12345".into(),
        kind: TrackingKind::Sent,
        channel: Some("ios".into()),
        target: Some("a".repeat(64)),
        template_name: None,
        stage: "sender.ios".into(),
        detail: None,
        at: 2,
        dispatched_at: Some(1),
    };
    compare("NotificationRequest", &request);
    compare("Delivery", &delivery);
    compare("TrackingEvent", &event);
}
