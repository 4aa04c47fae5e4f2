//! The codec against a schema registry.
//!
//! No real Confluent Schema Registry can run on this machine (Confluent's is
//! not on Maven Central, Karapace is not on PyPI), so these tests run a local
//! stand-in that speaks the documented Confluent REST API
//! (docs.confluent.io, Schema Registry API reference) with its semantics:
//!
//! - `POST /subjects/{subject}/versions` `{"schema": "..."}` answers `{"id": N}`
//!   from one id sequence shared by every subject; registering a schema the
//!   subject already has returns its id and adds no version; a schema already
//!   known under another subject keeps its global id; a changed schema gets a
//!   new id and becomes the subject's next version.
//! - The subject's compatibility rule is BACKWARD (the registry's default):
//!   the new schema must read data written with the latest version, checked
//!   with apache-avro's resolution rules; a refusal is HTTP 409 with
//!   `error_code` 409. A flag forces that refusal for one subject.
//! - An unparseable schema is 422 / 42201; `GET /schemas/ids/{id}` answers
//!   `{"schema": "..."}` or 404 / 40403; a flag makes every call a 500 / 50001.
//!
//! Schemas are compared after parsing and re-serialising, which, like the
//! registry's own comparison, ignores whitespace but not docs or defaults.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use apache_avro::{
    Schema, schema_compatibility::SchemaCompatibility, types::Record,
    writer::datum::GenericDatumWriter,
};
use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};
use tidings_schemas::{
    AvroCodec, CATALOG, CodecError, RegistryError, SchemaRegistry,
    records::{
        DeadLetter, Delivery, FanoutBatch, NotificationRequest, PostPublished, Priority,
        TrackingEvent,
    },
};

// ---------------------------------------------------------------------------
// The stand-in registry.

#[derive(Default)]
struct Registry {
    /// Schema text by id - 1, as first registered.
    schemas: Vec<String>,
    /// The comparison form of each schema, same index.
    normalized: Vec<String>,
    /// Each subject's versions, oldest first, as global ids.
    subjects: BTreeMap<String, Vec<u32>>,
    /// GET /schemas/ids/{id} requests per id.
    gets: BTreeMap<u32, usize>,
    /// Refuse any new version of this subject as incompatible.
    refuse_subject: Option<String>,
    /// Answer everything with 500 (a registry whose backing store is down).
    failing: bool,
    /// Authorization header of every request, in order.
    authorization: Vec<Option<String>>,
    /// Content-Type of every registration.
    content_types: Vec<Option<String>>,
}

#[derive(Clone)]
struct Fake {
    state: Arc<Mutex<Registry>>,
    /// `http://127.0.0.1:<port>`
    url: String,
}

impl Fake {
    async fn start() -> Fake {
        let state = Arc::new(Mutex::new(Registry::default()));
        let app = Router::new()
            .route("/subjects/{subject}/versions", post(register))
            .route("/schemas/ids/{id}", get(schema_by_id))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        Fake {
            state,
            url: format!("http://{addr}"),
        }
    }

    /// A registry already used by other teams, so ids we get are not small.
    async fn start_shared() -> Fake {
        let fake = Fake::start().await;
        let client = SchemaRegistry::new(&fake.url).expect("client");
        for i in 0..10 {
            let schema = format!(
                r#"{{"type":"record","name":"Thing{i}","namespace":"com.example.other","fields":[{{"name":"x","type":"int"}}]}}"#
            );
            client
                .register(&format!("other-topic-{i}-value"), &schema)
                .await
                .expect("seed");
        }
        fake
    }

    fn with<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut self.state.lock().expect("registry state"))
    }

    fn versions(&self, subject: &str) -> Vec<u32> {
        self.with(|r| r.subjects.get(subject).cloned().unwrap_or_default())
    }
}

fn answer(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            "application/vnd.schemaregistry.v1+json",
        )],
        body.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, code: u32, message: String) -> Response {
    answer(status, json!({ "error_code": code, "message": message }))
}

fn record_auth(r: &mut Registry, headers: &HeaderMap) {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    r.authorization.push(auth);
}

async fn register(
    State(state): State<Arc<Mutex<Registry>>>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mut r = state.lock().expect("registry state");
    record_auth(&mut r, &headers);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    r.content_types.push(content_type);
    if r.failing {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            50001,
            "Error in the backend datastore".into(),
        );
    }
    let Some(text) = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v.get("schema").and_then(Value::as_str).map(str::to_owned))
    else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            422,
            "Unrecognized field or missing schema".into(),
        );
    };
    let schema = match Schema::parse_str(&text) {
        Ok(s) => s,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                42201,
                format!("Invalid schema {e}"),
            );
        }
    };
    let normalized = serde_json::to_string(&schema).expect("a parsed schema serialises");
    let versions = r.subjects.get(&subject).cloned().unwrap_or_default();
    // Already a version of this subject: same id, no new version, no check.
    if let Some(&id) = versions
        .iter()
        .find(|&&id| r.normalized[id as usize - 1] == normalized)
    {
        return answer(StatusCode::OK, json!({ "id": id }));
    }
    let incompatible = |detail: String| {
        error(
            StatusCode::CONFLICT,
            409,
            format!(
                "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: {detail}"
            ),
        )
    };
    if let Some(&latest) = versions.last() {
        if r.refuse_subject.as_deref() == Some(subject.as_str()) {
            return incompatible("refused by the test".into());
        }
        let latest =
            Schema::parse_str(&r.schemas[latest as usize - 1]).expect("stored schemas parse");
        if let Err(e) = SchemaCompatibility::can_read(&latest, &schema) {
            return incompatible(e.to_string());
        }
    }
    let id = match r.normalized.iter().position(|n| *n == normalized) {
        Some(i) => i as u32 + 1,
        None => {
            r.schemas.push(text);
            r.normalized.push(normalized);
            r.schemas.len() as u32
        }
    };
    r.subjects.entry(subject).or_default().push(id);
    answer(StatusCode::OK, json!({ "id": id }))
}

async fn schema_by_id(
    State(state): State<Arc<Mutex<Registry>>>,
    Path(id): Path<u32>,
    headers: HeaderMap,
) -> Response {
    let mut r = state.lock().expect("registry state");
    record_auth(&mut r, &headers);
    *r.gets.entry(id).or_default() += 1;
    if r.failing {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            50001,
            "Error in the backend datastore".into(),
        );
    }
    match (id as usize).checked_sub(1).and_then(|i| r.schemas.get(i)) {
        Some(text) => answer(StatusCode::OK, json!({ "schema": text })),
        None => error(
            StatusCode::NOT_FOUND,
            40403,
            format!("Schema {id} not found"),
        ),
    }
}

// ---------------------------------------------------------------------------
// Records.

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
        priority: Priority::High,
        expires_at: None,
        accepted_at: 1,
        attempt: 2,
        not_before: Some(5),
        last_error: Some("503".into()),
        action_url: None,
        avatar_url: None,
    }
}

/// An older Delivery without the optional fields added since, as a service
/// on an old release (or another team's producer) may still write.
const OLD_DELIVERY: &str = r#"{"type":"record","name":"Delivery","namespace":"tidings.v1","fields":[
    {"name":"delivery_id","type":"string"},{"name":"notification_id","type":"string"},
    {"name":"event_id","type":"string"},{"name":"user_id","type":"string"},
    {"name":"channel","type":"string"},{"name":"target","type":"string"},
    {"name":"accepted_at","type":"long"}]}"#;

/// A record in the Confluent wire format written with `OLD_DELIVERY`,
/// directly with apache-avro as a third party would.
fn old_delivery_bytes(id: u32, n: usize) -> Vec<u8> {
    let schema = Schema::parse_str(OLD_DELIVERY).expect("old schema parses");
    let mut rec = Record::new(&schema).expect("a record schema");
    for f in [
        "delivery_id",
        "notification_id",
        "event_id",
        "user_id",
        "channel",
    ] {
        rec.put(f, format!("{f}-{n}"));
    }
    rec.put("target", "t".repeat(12));
    rec.put("accepted_at", n as i64);
    let body = GenericDatumWriter::builder(&schema)
        .build()
        .expect("writer")
        .write_value_to_vec(rec)
        .expect("old record encodes");
    let mut bytes = vec![0];
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend(body);
    bytes
}

/// The ids `codec` writes, in catalog order.
fn write_ids(codec: &AvroCodec) -> Vec<u32> {
    vec![
        codec
            .schema_id::<NotificationRequest>()
            .expect("in catalog"),
        codec.schema_id::<Delivery>().expect("in catalog"),
        codec.schema_id::<DeadLetter>().expect("in catalog"),
        codec.schema_id::<TrackingEvent>().expect("in catalog"),
        codec.schema_id::<PostPublished>().expect("in catalog"),
        codec.schema_id::<FanoutBatch>().expect("in catalog"),
    ]
}

// ---------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn the_catalog_is_registered_under_record_names_and_written_with_registry_ids() {
    let fake = Fake::start_shared().await;
    let codec = AvroCodec::with_registry(&fake.url)
        .await
        .expect("registry codec");

    let ids = write_ids(&codec);
    assert_eq!(
        CATALOG[1].full_name, "tidings.v1.Delivery",
        "write_ids follows catalog order"
    );
    for (entry, &id) in CATALOG.iter().zip(&ids) {
        // RecordNameStrategy: one subject per record type, named after it.
        assert_eq!(
            fake.versions(entry.full_name),
            vec![id],
            "{}",
            entry.full_name
        );
        assert!(
            id > 10,
            "{} got id {id}, from before the seeded schemas",
            entry.full_name
        );
        assert_ne!(
            id, entry.local_id,
            "{} is written with its local id",
            entry.full_name
        );
        fake.with(|r| assert_eq!(r.schemas[id as usize - 1], entry.source));
    }

    let d = delivery();
    let bytes = codec.encode(&d).expect("encodes");
    assert_eq!(bytes[0], 0, "magic byte");
    assert_eq!(
        u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]),
        ids[1]
    );
    assert_eq!(codec.decode::<Delivery>(&bytes).expect("decodes"), d);
    assert_eq!(
        codec
            .decode_async::<Delivery>(&bytes)
            .await
            .expect("decodes"),
        d
    );

    // Another service on the same build (or this one, restarted): the same
    // schemas get the same ids and no new versions, so it reads the first
    // one's records without asking the registry anything.
    let other = AvroCodec::with_registry(&fake.url)
        .await
        .expect("second codec");
    assert_eq!(write_ids(&other), ids);
    for entry in CATALOG {
        assert_eq!(
            fake.versions(entry.full_name).len(),
            1,
            "{}",
            entry.full_name
        );
    }
    assert_eq!(
        other
            .decode_async::<Delivery>(&bytes)
            .await
            .expect("decodes"),
        d
    );
    fake.with(|r| {
        assert_eq!(
            r.schemas.len(),
            10 + CATALOG.len(),
            "no schema registered twice"
        );
        assert!(r.gets.is_empty(), "nothing to fetch: {:?}", r.gets);
        let vnd = Some("application/vnd.schemaregistry.v1+json".to_owned());
        assert!(
            r.content_types.iter().all(|c| *c == vnd),
            "{:?}",
            r.content_types
        );
    });
}

#[tokio::test]
async fn records_written_with_an_older_registered_schema_are_fetched_once_and_resolved() {
    let fake = Fake::start_shared().await;
    // A producer on an older release registered (and writes) the old Delivery.
    let old_id = SchemaRegistry::new(&fake.url)
        .expect("client")
        .register("tidings.v1.Delivery", OLD_DELIVERY)
        .await
        .expect("old schema registers");

    // Our build registers its Delivery as the subject's next version: it
    // adds only fields with defaults, so BACKWARD compatibility holds.
    let codec = AvroCodec::with_registry(&fake.url)
        .await
        .expect("registry codec");
    let new_id = codec.schema_id::<Delivery>().expect("in catalog");
    assert_ne!(new_id, old_id);
    assert_eq!(fake.versions("tidings.v1.Delivery"), vec![old_id, new_id]);

    // A whole batch of old records, decoded concurrently (as partitions are):
    // the writer schema is fetched once, then read from memory.
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..40 {
        let codec = codec.clone();
        let bytes = old_delivery_bytes(old_id, n);
        tasks.spawn(async move { (n, codec.decode_async::<Delivery>(&bytes).await) });
    }
    while let Some(joined) = tasks.join_next().await {
        let (n, decoded) = joined.expect("task ran");
        let d = decoded.unwrap_or_else(|e| panic!("record {n}: {e}"));
        assert_eq!(d.delivery_id, format!("delivery_id-{n}"));
        assert_eq!(d.accepted_at, n as i64);
        // Fields the old schema lacks take the current schema's defaults.
        assert_eq!(d.attempt, 0);
        assert_eq!(d.priority, Priority::Normal);
        assert_eq!(d.last_error, None);
        assert!(d.data.is_empty());
    }
    // Cached: the sync decode knows the id now too.
    let d: Delivery = codec
        .decode(&old_delivery_bytes(old_id, 99))
        .expect("cached schema");
    assert_eq!(d.accepted_at, 99);
    fake.with(|r| assert_eq!(r.gets, BTreeMap::from([(old_id, 1)]), "one fetch per id"));
}

#[tokio::test]
async fn an_incompatible_schema_is_refused_at_startup_naming_the_subject() {
    let fake = Fake::start().await;
    // Someone registered a Delivery whose `target` is an int; ours, a
    // string, cannot read that data.
    let theirs = OLD_DELIVERY.replace(
        r#"{"name":"target","type":"string"}"#,
        r#"{"name":"target","type":"int"}"#,
    );
    SchemaRegistry::new(&fake.url)
        .expect("client")
        .register("tidings.v1.Delivery", &theirs)
        .await
        .expect("seed");

    let e = AvroCodec::with_registry(&fake.url)
        .await
        .expect_err("refused");
    assert!(e.is_incompatible(), "{e}");
    assert_eq!(e.error_code(), Some(409));
    assert!(!e.is_retriable(), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("registering subject tidings.v1.Delivery"),
        "{text}"
    );
    assert!(text.contains(&fake.url), "{text}");
    assert!(
        text.contains("incompatible with an earlier schema"),
        "{text}"
    );
}

#[tokio::test]
async fn a_refusal_forced_by_the_registry_names_the_subject() {
    let fake = Fake::start().await;
    // The subject has a version ours differs from, so ours is a new version
    // to check; the registry refuses it whatever the schemas say (as it
    // would under a stricter compatibility level than ours assumes).
    let earlier = r#"{"type":"record","name":"TrackingEvent","namespace":"tidings.v1","fields":[{"name":"event_id","type":"string"}]}"#;
    SchemaRegistry::new(&fake.url)
        .expect("client")
        .register("tidings.v1.TrackingEvent", earlier)
        .await
        .expect("seed");
    fake.with(|r| r.refuse_subject = Some("tidings.v1.TrackingEvent".into()));
    let e = AvroCodec::with_registry(&fake.url)
        .await
        .expect_err("refused");
    let text = e.to_string();
    assert!(
        text.contains("registering subject tidings.v1.TrackingEvent")
            && text.contains("HTTP 409 Conflict (error_code 409)")
            && text.contains("Schema being registered is incompatible with an earlier schema"),
        "{text}"
    );
}

#[tokio::test]
async fn unknown_ids_are_permanent_errors_and_a_failing_registry_is_retriable() {
    let fake = Fake::start_shared().await;
    let codec = AvroCodec::with_registry(&fake.url)
        .await
        .expect("registry codec");

    let e = codec
        .decode_async::<Delivery>(&[0, 0, 0, 0x27, 0x0F, 0])
        .await
        .expect_err("unknown id");
    match &e {
        CodecError::Registry { id: 9999, source } => {
            assert_eq!(source.status(), Some(StatusCode::NOT_FOUND));
            assert_eq!(source.error_code(), Some(40403));
        }
        other => panic!("{other}"),
    }
    assert!(!e.is_retriable(), "{e}");
    assert!(e.to_string().contains("/schemas/ids/9999"), "{e}");

    // An id registered by someone else for another record type: fetched,
    // then refused as the wrong type rather than misread.
    let e = codec
        .decode_async::<Delivery>(&[0, 0, 0, 0, 1, 0])
        .await
        .expect_err("wrong type");
    assert!(
        matches!(e, CodecError::WrongRecordType { id: 1, .. }),
        "{e}"
    );

    fake.with(|r| r.failing = true);
    let e = codec
        .decode_async::<Delivery>(&[0, 0, 0, 0x27, 0x0E, 0])
        .await
        .expect_err("500");
    assert!(e.is_retriable(), "{e}");
    assert!(
        matches!(&e, CodecError::Registry { source, .. } if source.error_code() == Some(50001)),
        "{e}"
    );
    // Records this codec knows still decode while the registry is down.
    let d = delivery();
    assert_eq!(
        codec
            .decode_async::<Delivery>(&codec.encode(&d).expect("encodes"))
            .await
            .expect("known id"),
        d
    );
}

#[tokio::test]
async fn decode_async_on_a_local_codec_is_decode() {
    let codec = AvroCodec::local();
    let d = delivery();
    let bytes = codec.encode(&d).expect("encodes");
    assert_eq!(
        codec
            .decode_async::<Delivery>(&bytes)
            .await
            .expect("decodes"),
        d
    );
    assert!(matches!(
        codec.decode_async::<Delivery>(&[0, 0, 0, 0, 99, 0]).await,
        Err(CodecError::UnknownSchemaId(99))
    ));
    assert!(matches!(
        codec.decode_async::<Delivery>(&[0, 0]).await,
        Err(CodecError::TooShort { .. })
    ));
}

#[tokio::test]
async fn an_unreachable_registry_is_a_retriable_error_naming_the_url() {
    let e = AvroCodec::with_registry("http://127.0.0.1:1")
        .await
        .expect_err("nothing listens on port 1");
    assert!(matches!(e, RegistryError::Transport { .. }), "{e}");
    assert!(e.is_retriable(), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("http://127.0.0.1:1/subjects/tidings.v1.NotificationRequest/versions"),
        "{text}"
    );

    // Credentials never reach the message.
    let e = AvroCodec::with_registry("http://svc:hunter2@127.0.0.1:1")
        .await
        .expect_err("unreachable");
    assert!(
        !e.to_string().contains("hunter2") && !e.to_string().contains("svc:"),
        "{e}"
    );
}

#[tokio::test]
async fn credentials_in_the_url_are_sent_as_basic_auth() {
    let fake = Fake::start().await;
    let port = fake.url.rsplit(':').next().expect("a port");
    // `s@cr:t`, percent-encoded as userinfo requires.
    let with_auth = format!("http://alice:s%40cr%3At@127.0.0.1:{port}");
    let codec = AvroCodec::with_registry(&with_auth)
        .await
        .expect("registry codec");
    codec
        .decode_async::<Delivery>(&[0, 0, 0, 0x27, 0x0F, 0])
        .await
        .expect_err("no schema 9999");
    fake.with(|r| {
        // base64("alice:s@cr:t")
        let expected = Some("Basic YWxpY2U6c0Bjcjp0".to_owned());
        assert_eq!(r.authorization.len(), CATALOG.len() + 1);
        assert!(
            r.authorization.iter().all(|a| *a == expected),
            "{:?}",
            r.authorization
        );
        r.authorization.clear();
    });
    assert_eq!(
        codec.registry().expect("has a registry").url(),
        format!("http://127.0.0.1:{port}/")
    );

    AvroCodec::with_registry(&fake.url)
        .await
        .expect("without credentials");
    fake.with(|r| {
        assert!(
            r.authorization.iter().all(Option::is_none),
            "{:?}",
            r.authorization
        )
    });
}
