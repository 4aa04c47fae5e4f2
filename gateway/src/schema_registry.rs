//! A read-only, Confluent-compatible schema-registry API over the built-in
//! schema ids, under `/schema-registry` on the gateway's HTTP port.
//!
//! Without `kafka.schema_registry_url` every record on the topics carries one
//! of the catalog's fixed local ids (`schemas/src/catalog.rs`) in the
//! Confluent wire format (magic byte 0, 4-byte big-endian id, Avro body).
//! Confluent's deserializers, Kafka Connect and ksqlDB look an id up in a
//! registry before they decode a record; serving the catalog under the
//! registry's REST API lets them read the topics with no registry deployed:
//! their `schema.registry.url` is `http://<gateway>/schema-registry`.
//!
//! Why a path prefix, not the root: Confluent clients treat the URL as a base
//! and append the API's paths to it, so a prefix costs them nothing, while
//! `/config` or `/mode` at the gateway's root would read as the gateway's own.
//!
//! What it serves, read-only:
//! - `GET /subjects`: one subject per topic under Confluent's default
//!   TopicNameStrategy (`<topic>-value`, for this deployment's
//!   `kafka.topic_prefix`), plus each record's full name
//!   (RecordNameStrategy, the subjects a real registry holds for tidings).
//! - `GET /subjects/{subject}/versions`, `.../versions/{version|latest}`
//!   and `.../versions/{version}/schema`: each subject has one version, 1,
//!   whose id is the record's local id. A local id always names its
//!   record's current schema (the ids are fixed per record type, not per
//!   schema version), so there is no other version to serve.
//! - `POST /subjects/{subject}` with `{"schema": "..."}`: the lookup a
//!   client makes before it trusts a schema it holds (a reader with
//!   `use.latest.version`, a writer that does not register); it registers
//!   nothing.
//! - `GET /schemas/ids/{id}`, `.../schema`, `.../subjects`, `.../versions`;
//!   `GET /schemas/types`, `GET /config`, `GET /config/{subject}`,
//!   `GET /mode`.
//!
//! Every answer has the content type `application/vnd.schemaregistry.v1+json`
//! and errors are Confluent's body, e.g. `{"error_code":40403,"message":
//! "Schema not found"}`. Query parameters Confluent clients add (`subject`,
//! `format`, `deleted`, ...) are accepted and change nothing.
//!
//! With `kafka.schema_registry_url` set the records carry that registry's ids
//! instead, which these tables do not know: every route answers 404 naming
//! the setting, rather than a schema that may not be the writer's.

use std::sync::LazyLock;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::Value;
use tidings_kafka::Topics;
use tidings_schemas::{CATALOG, catalog::CatalogEntry};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::Gateway;

/// The content type of the registry's v1 API, on answers and errors alike.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// The compatibility rule the schemas evolve by (`schemas/tests/evolution.rs`).
const COMPATIBILITY: &str = "BACKWARD_TRANSITIVE";

/// The routes, under `/schema-registry`.
pub fn routes() -> OpenApiRouter<Gateway> {
    OpenApiRouter::new()
        .routes(routes!(subjects))
        .routes(routes!(subject_versions))
        .routes(routes!(lookup))
        .routes(routes!(subject_version))
        .routes(routes!(subject_version_schema))
        .routes(routes!(schema_by_id))
        .routes(routes!(schema_by_id_raw))
        .routes(routes!(schema_id_subjects))
        .routes(routes!(schema_id_versions))
        .routes(routes!(schema_types))
        .routes(routes!(config))
        .routes(routes!(subject_config))
        .routes(routes!(mode))
}

/// One subject: its name and the catalog schema it names.
#[derive(Debug, Clone)]
struct Subject {
    name: String,
    entry: &'static CatalogEntry,
}

/// The registry's view of one deployment: its subjects, sorted by name.
#[derive(Debug)]
struct BuiltIn {
    subjects: Vec<Subject>,
}

/// A refused call, as Confluent's registry answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RegistryError {
    SubjectNotFound(String),
    VersionNotFound(String),
    SchemaNotFound,
    InvalidVersion(String),
    /// A lookup's body is not `{"schema": "<Avro schema JSON>"}`.
    InvalidSchema(String),
    /// `kafka.schema_registry_url` is set: the topics carry another
    /// registry's ids.
    ExternalRegistry,
}

impl RegistryError {
    fn status_and_code(&self) -> (StatusCode, u32) {
        match self {
            RegistryError::SubjectNotFound(_) => (StatusCode::NOT_FOUND, 40401),
            RegistryError::VersionNotFound(_) => (StatusCode::NOT_FOUND, 40402),
            RegistryError::SchemaNotFound | RegistryError::ExternalRegistry => {
                (StatusCode::NOT_FOUND, 40403)
            }
            RegistryError::InvalidVersion(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42202),
            RegistryError::InvalidSchema(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42201),
        }
    }

    fn message(&self) -> String {
        match self {
            RegistryError::SubjectNotFound(s) => format!("Subject '{s}' not found."),
            RegistryError::VersionNotFound(v) => format!("Version {v} not found."),
            RegistryError::SchemaNotFound => "Schema not found".to_owned(),
            RegistryError::InvalidVersion(v) => format!(
                "The specified version '{v}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
            ),
            RegistryError::InvalidSchema(why) => format!("Invalid schema: {why}"),
            RegistryError::ExternalRegistry => "Schema not found: this deployment writes the schema ids of the registry in kafka.schema_registry_url, not the built-in ones; ask that registry".to_owned(),
        }
    }
}

/// Confluent's error body.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RegistryErrorBody {
    /// 40401 subject not found, 40402 version not found, 40403 schema not
    /// found, 42202 invalid version.
    error_code: u32,
    message: String,
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (status, error_code) = self.status_and_code();
        let body = RegistryErrorBody {
            error_code,
            message: self.message(),
        };
        registry_json(status, &body)
    }
}

/// A JSON answer with the registry's content type.
fn registry_json(status: StatusCode, body: &impl Serialize) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        Json(body).into_response().into_body(),
    )
        .into_response()
}

type Answer = Result<Response, RegistryError>;

fn ok(body: &impl Serialize) -> Answer {
    Ok(registry_json(StatusCode::OK, body))
}

/// The catalog's `.avsc` texts as compact JSON, as a registry stores them.
/// They are compiled in and parsed by the catalog's tests; should one not
/// be JSON, its text is served as it is.
static COMPACT: LazyLock<Vec<String>> = LazyLock::new(|| {
    CATALOG
        .iter()
        .map(|entry| {
            serde_json::from_str::<Value>(entry.source)
                .map(|v| v.to_string())
                .unwrap_or_else(|_| entry.source.to_owned())
        })
        .collect()
});

fn compact_schema(entry: &CatalogEntry) -> &'static str {
    CATALOG
        .iter()
        .position(|e| std::ptr::eq(e, entry))
        .and_then(|i| COMPACT.get(i))
        .map_or(entry.source, String::as_str)
}

/// The catalog entry whose record a topic spec carries (specs name records
/// by their short name).
fn entry_of_record(record: &str) -> Option<&'static CatalogEntry> {
    CATALOG
        .iter()
        .find(|e| e.full_name.rsplit('.').next() == Some(record))
}

impl BuiltIn {
    fn new(topics: &Topics) -> Self {
        let by_topic = topics.specs(1).into_iter().filter_map(|spec| {
            Some(Subject {
                name: format!("{}-value", spec.name),
                entry: entry_of_record(spec.record)?,
            })
        });
        let by_record = CATALOG.iter().map(|entry| Subject {
            name: entry.full_name.to_owned(),
            entry,
        });
        let mut subjects: Vec<Subject> = by_topic.chain(by_record).collect();
        subjects.sort_by(|a, b| a.name.cmp(&b.name));
        subjects.dedup_by(|a, b| a.name == b.name);
        Self { subjects }
    }

    /// The built-in subjects, unless the topics carry another registry's
    /// ids (`kafka.schema_registry_url`).
    fn unless_external(external_registry: bool, topics: &Topics) -> Result<Self, RegistryError> {
        if external_registry {
            return Err(RegistryError::ExternalRegistry);
        }
        Ok(Self::new(topics))
    }

    fn names(&self) -> Vec<&str> {
        self.subjects.iter().map(|s| s.name.as_str()).collect()
    }

    fn subject(&self, name: &str) -> Result<&Subject, RegistryError> {
        self.subjects
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| RegistryError::SubjectNotFound(name.to_owned()))
    }

    /// The subject's version `version`: `latest`, `-1` (Confluent's alias
    /// for it) or `1`, its only one.
    fn version(&self, name: &str, version: &str) -> Result<&Subject, RegistryError> {
        let subject = self.subject(name)?;
        match version {
            "latest" | "-1" => Ok(subject),
            v => match v.parse::<i32>() {
                Ok(1) => Ok(subject),
                Ok(n) if n >= 1 => Err(RegistryError::VersionNotFound(v.to_owned())),
                _ => Err(RegistryError::InvalidVersion(v.to_owned())),
            },
        }
    }

    /// The subject's version whose schema is `body`'s (`{"schema": "..."}`),
    /// compared as JSON: what a client asks before it trusts a schema it
    /// holds (a reader's `use.latest.version`, a writer that does not
    /// register).
    fn lookup(&self, name: &str, body: &[u8]) -> Result<&Subject, RegistryError> {
        let subject = self.subject(name)?;
        let asked: LookupBody = serde_json::from_slice(body).map_err(|e| {
            RegistryError::InvalidSchema(format!("the body is not {{\"schema\": \"...\"}}: {e}"))
        })?;
        if let Some(kind) = asked.schema_type.filter(|t| t != "AVRO") {
            return Err(RegistryError::InvalidSchema(format!(
                "schemaType {kind}: only AVRO is served"
            )));
        }
        let asked: Value = serde_json::from_str(&asked.schema)
            .map_err(|e| RegistryError::InvalidSchema(format!("the schema is not JSON: {e}")))?;
        let ours: Option<Value> = serde_json::from_str(compact_schema(subject.entry)).ok();
        if ours.as_ref() == Some(&asked) {
            Ok(subject)
        } else {
            Err(RegistryError::SchemaNotFound)
        }
    }

    /// The subjects whose schema has `id`.
    fn with_id(&self, id: &str) -> Result<Vec<&Subject>, RegistryError> {
        let entry = entry_of_id(id)?;
        Ok(self
            .subjects
            .iter()
            .filter(|s| std::ptr::eq(s.entry, entry))
            .collect())
    }
}

/// The catalog entry of a schema id given as text; anything that is not one
/// of the local ids is "Schema not found", as Confluent answers.
fn entry_of_id(id: &str) -> Result<&'static CatalogEntry, RegistryError> {
    let id: u32 = id.parse().map_err(|_| RegistryError::SchemaNotFound)?;
    CATALOG
        .iter()
        .find(|e| e.local_id == id)
        .ok_or(RegistryError::SchemaNotFound)
}

/// One version of a subject, as `GET /subjects/{subject}/versions/{version}`
/// answers (`schemaType` is left out for Avro, as Confluent does).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SubjectVersion {
    subject: String,
    version: i32,
    id: u32,
    /// The Avro schema, as JSON text.
    schema: String,
}

fn subject_version_body(subject: &Subject) -> SubjectVersion {
    SubjectVersion {
        subject: subject.name.clone(),
        version: 1,
        id: subject.entry.local_id,
        schema: compact_schema(subject.entry).to_owned(),
    }
}

/// What `POST /subjects/{subject}` is asked.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LookupBody {
    /// The Avro schema, as JSON text.
    schema: String,
    /// `AVRO` (the default) is the only type served.
    #[serde(default)]
    schema_type: Option<String>,
}

/// A schema by id, as `GET /schemas/ids/{id}` answers.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SchemaById {
    /// The Avro schema, as JSON text.
    schema: String,
}

/// A subject and version a schema id is registered under.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SubjectVersionRef {
    subject: String,
    version: i32,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CompatibilityConfig {
    /// Always `BACKWARD_TRANSITIVE`, the rule the schemas evolve by.
    compatibility_level: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RegistryMode {
    /// Always `READONLY`.
    mode: &'static str,
}

/// The deployment's subjects, or why they are not served.
fn built_in(gateway: &Gateway) -> Result<BuiltIn, RegistryError> {
    BuiltIn::unless_external(
        gateway.producer.codec().registry().is_some(),
        &gateway.topics,
    )
}

/// The raw schema JSON, as the `/schema` routes answer.
fn raw_schema(entry: &CatalogEntry) -> Answer {
    let schema: Value = serde_json::from_str(compact_schema(entry))
        .unwrap_or_else(|_| Value::String(entry.source.to_owned()));
    ok(&schema)
}

/// Every subject: `<topic>-value` for each topic, and each record's full name.
#[utoipa::path(get, path = "/schema-registry/subjects", tag = "schema-registry",
    responses(
        (status = 200, description = "The subject names, sorted", content_type = "application/vnd.schemaregistry.v1+json", body = Vec<String>),
        (status = 404, description = "A schema registry is configured (kafka.schema_registry_url): ask it", content_type = "application/vnd.schemaregistry.v1+json", body = RegistryErrorBody),
    ))]
async fn subjects(State(gateway): State<Gateway>) -> Answer {
    ok(&built_in(&gateway)?.names())
}

/// A subject's versions: always `[1]`.
#[utoipa::path(get, path = "/schema-registry/subjects/{subject}/versions", tag = "schema-registry",
    params(("subject" = String, Path, description = "`<topic>-value` or a record's full name", example = "tidings.v1.TrackingEvent")),
    responses(
        (status = 200, description = "The subject's version numbers", content_type = "application/vnd.schemaregistry.v1+json", body = Vec<i32>),
        (status = 404, description = "No such subject (40401)", content_type = "application/vnd.schemaregistry.v1+json", body = RegistryErrorBody),
    ))]
async fn subject_versions(State(gateway): State<Gateway>, Path(subject): Path<String>) -> Answer {
    built_in(&gateway)?.subject(&subject)?;
    ok(&[1])
}

/// Whether a subject has a schema: its version and id if so. Read-only:
/// nothing is registered.
#[utoipa::path(post, path = "/schema-registry/subjects/{subject}", tag = "schema-registry",
    params(("subject" = String, Path, description = "`<topic>-value` or a record's full name", example = "tidings.v1.TrackingEvent")),
    request_body(content = LookupBody, content_type = "application/vnd.schemaregistry.v1+json"),
    responses(
        (status = 200, description = "The subject's version with this schema", content_type = "application/vnd.schemaregistry.v1+json", body = SubjectVersion),
        (status = 404, description = "No such subject (40401), or it has no such schema (40403)", content_type = "application/vnd.schemaregistry.v1+json", body = RegistryErrorBody),
        (status = 422, description = "Not an Avro schema (42201)", content_type = "application/vnd.schemaregistry.v1+json", body = RegistryErrorBody),
    ))]
async fn lookup(
    State(gateway): State<Gateway>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Answer {
    let registry = built_in(&gateway)?;
    ok(&subject_version_body(registry.lookup(&subject, &body)?))
}

/// One version of a subject: its id and schema.
#[utoipa::path(get, path = "/schema-registry/subjects/{subject}/versions/{version}", tag = "schema-registry",
    params(
        ("subject" = String, Path, description = "`<topic>-value` or a record's full name", example = "tidings.v1.TrackingEvent"),
        ("version" = String, Path, description = "`latest`, `-1` (latest) or a version number", example = "latest"),
    ),
    responses(
        (status = 200, description = "The version", content_type = "application/vnd.schemaregistry.v1+json", body = SubjectVersion),
        (status = 404, description = "No such subject (40401) or version (40402)", content_type = "application/vnd.schemaregistry.v1+json", body = RegistryErrorBody),
        (status = 422, description = "Not a version (42202)", content_type = "application/vnd.schemaregistry.v1+json", body = RegistryErrorBody),
    ))]
async fn subject_version(
    State(gateway): State<Gateway>,
    Path((subject, version)): Path<(String, String)>,
) -> Answer {
    let registry = built_in(&gateway)?;
    ok(&subject_version_body(registry.version(&subject, &version)?))
}

/// One version's schema alone.
#[utoipa::path(get, path = "/schema-registry/subjects/{subject}/versions/{version}/schema", tag = "schema-registry",
    params(
        ("subject" = String, Path, description = "`<topic>-value` or a record's full name", example = "tidings.v1.TrackingEvent"),
        ("version" = String, Path, description = "`latest`, `-1` (latest) or a version number", example = "latest"),
    ),
    responses(
        (status = 200, description = "The Avro schema", content_type = "application/vnd.schemaregistry.v1+json", body = Object),
        (status = 404, description = "No such subject (40401) or version (40402)", content_type = "application/vnd.schemaregistry.v1+json", body = RegistryErrorBody),
        (status = 422, description = "Not a version (42202)", content_type = "application/vnd.schemaregistry.v1+json", body = RegistryErrorBody),
    ))]
async fn subject_version_schema(
    State(gateway): State<Gateway>,
    Path((subject, version)): Path<(String, String)>,
) -> Answer {
    raw_schema(built_in(&gateway)?.version(&subject, &version)?.entry)
}

/// The schema with this id: what a deserializer asks for the id in a record.
#[utoipa::path(get, path = "/schema-registry/schemas/ids/{id}", tag = "schema-registry",
    params(("id" = String, Path, description = "A schema id (docs/schemas.md lists them)", example = "4")),
    responses(
        (status = 200, description = "The schema", content_type = "application/vnd.schemaregistry.v1+json", body = SchemaById),
        (status = 404, description = "No such id (40403)", content_type = "application/vnd.schemaregistry.v1+json", body = RegistryErrorBody),
    ))]
async fn schema_by_id(State(gateway): State<Gateway>, Path(id): Path<String>) -> Answer {
    built_in(&gateway)?;
    let entry = entry_of_id(&id)?;
    ok(&SchemaById {
        schema: compact_schema(entry).to_owned(),
    })
}

/// The schema with this id alone.
#[utoipa::path(get, path = "/schema-registry/schemas/ids/{id}/schema", tag = "schema-registry",
    params(("id" = String, Path, description = "A schema id", example = "4")),
    responses(
        (status = 200, description = "The Avro schema", content_type = "application/vnd.schemaregistry.v1+json", body = Object),
        (status = 404, description = "No such id (40403)", content_type = "application/vnd.schemaregistry.v1+json", body = RegistryErrorBody),
    ))]
async fn schema_by_id_raw(State(gateway): State<Gateway>, Path(id): Path<String>) -> Answer {
    built_in(&gateway)?;
    raw_schema(entry_of_id(&id)?)
}

/// The subjects whose version has this id.
#[utoipa::path(get, path = "/schema-registry/schemas/ids/{id}/subjects", tag = "schema-registry",
    params(("id" = String, Path, description = "A schema id", example = "4")),
    responses(
        (status = 200, description = "The subjects", content_type = "application/vnd.schemaregistry.v1+json", body = Vec<String>),
        (status = 404, description = "No such id (40403)", content_type = "application/vnd.schemaregistry.v1+json", body = RegistryErrorBody),
    ))]
async fn schema_id_subjects(State(gateway): State<Gateway>, Path(id): Path<String>) -> Answer {
    let registry = built_in(&gateway)?;
    let names: Vec<&str> = registry
        .with_id(&id)?
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    ok(&names)
}

/// The subject versions that have this id.
#[utoipa::path(get, path = "/schema-registry/schemas/ids/{id}/versions", tag = "schema-registry",
    params(("id" = String, Path, description = "A schema id", example = "4")),
    responses(
        (status = 200, description = "The subject versions", content_type = "application/vnd.schemaregistry.v1+json", body = Vec<SubjectVersionRef>),
        (status = 404, description = "No such id (40403)", content_type = "application/vnd.schemaregistry.v1+json", body = RegistryErrorBody),
    ))]
async fn schema_id_versions(State(gateway): State<Gateway>, Path(id): Path<String>) -> Answer {
    let registry = built_in(&gateway)?;
    let versions: Vec<SubjectVersionRef> = registry
        .with_id(&id)?
        .iter()
        .map(|s| SubjectVersionRef {
            subject: s.name.clone(),
            version: 1,
        })
        .collect();
    ok(&versions)
}

/// The schema types served: Avro only.
#[utoipa::path(get, path = "/schema-registry/schemas/types", tag = "schema-registry",
    responses((status = 200, description = "`[\"AVRO\"]`", content_type = "application/vnd.schemaregistry.v1+json", body = Vec<String>)))]
async fn schema_types() -> Answer {
    ok(&["AVRO"])
}

/// The global compatibility rule.
#[utoipa::path(get, path = "/schema-registry/config", tag = "schema-registry",
    responses((status = 200, description = "The rule the schemas evolve by", content_type = "application/vnd.schemaregistry.v1+json", body = CompatibilityConfig)))]
async fn config() -> Answer {
    ok(&CompatibilityConfig {
        compatibility_level: COMPATIBILITY,
    })
}

/// A subject's compatibility rule: the global one.
#[utoipa::path(get, path = "/schema-registry/config/{subject}", tag = "schema-registry",
    params(("subject" = String, Path, description = "`<topic>-value` or a record's full name", example = "tidings.v1.TrackingEvent")),
    responses(
        (status = 200, description = "The rule the schemas evolve by", content_type = "application/vnd.schemaregistry.v1+json", body = CompatibilityConfig),
        (status = 404, description = "No such subject (40401)", content_type = "application/vnd.schemaregistry.v1+json", body = RegistryErrorBody),
    ))]
async fn subject_config(State(gateway): State<Gateway>, Path(subject): Path<String>) -> Answer {
    built_in(&gateway)?.subject(&subject)?;
    ok(&CompatibilityConfig {
        compatibility_level: COMPATIBILITY,
    })
}

/// The registry's mode: read-only.
#[utoipa::path(get, path = "/schema-registry/mode", tag = "schema-registry",
    responses((status = 200, description = "`{\"mode\":\"READONLY\"}`", content_type = "application/vnd.schemaregistry.v1+json", body = RegistryMode)))]
async fn mode() -> Answer {
    ok(&RegistryMode { mode: "READONLY" })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn registry() -> BuiltIn {
        BuiltIn::new(&Topics::new("acme"))
    }

    #[test]
    fn every_topic_has_a_value_subject_and_every_record_its_name() {
        let r = registry();
        let names = r.names();
        let topics = Topics::new("acme").specs(1);
        for spec in &topics {
            let subject = r.subject(&format!("{}-value", spec.name)).expect("subject");
            assert!(
                subject
                    .entry
                    .full_name
                    .ends_with(&format!(".{}", spec.record))
            );
        }
        for entry in CATALOG {
            assert_eq!(
                r.subject(entry.full_name).unwrap().entry.local_id,
                entry.local_id
            );
        }
        assert_eq!(names.len(), topics.len() + CATALOG.len());
        assert!(names.is_sorted(), "{names:?}");
    }

    #[test]
    fn the_tracking_topic_names_the_tracking_event_schema_by_its_local_id() {
        let r = registry();
        let subject = r.version("acme.tracking-value", "latest").unwrap();
        let body = subject_version_body(subject);
        assert_eq!((body.version, body.id), (1, 4));
        let schema: Value = serde_json::from_str(&body.schema).unwrap();
        assert_eq!(schema["name"], "TrackingEvent");
        assert!(!body.schema.contains('\n'), "compact JSON");
    }

    #[test]
    fn versions_other_than_the_only_one_are_refused_as_confluent_does() {
        let r = registry();
        let s = "tidings.v1.Delivery";
        assert!(r.version(s, "1").is_ok());
        assert!(r.version(s, "-1").is_ok());
        assert_eq!(
            r.version(s, "2").unwrap_err(),
            RegistryError::VersionNotFound("2".into())
        );
        for bad in ["0", "-2", "x", "99999999999"] {
            let e = r.version(s, bad).unwrap_err();
            assert_eq!(
                e.status_and_code(),
                (StatusCode::UNPROCESSABLE_ENTITY, 42202),
                "{bad}"
            );
        }
        let e = r.version("acme.nope-value", "1").unwrap_err();
        assert_eq!(e.status_and_code(), (StatusCode::NOT_FOUND, 40401));
    }

    #[test]
    fn a_lookup_finds_the_subjects_schema_and_nothing_else() {
        let r = registry();
        let entry = tidings_schemas::catalog::lookup("tidings.v1.TrackingEvent")
            .unwrap()
            .entry;
        // As a client holding the .avsc text (whitespace is not compared).
        let body = json!({"schema": entry.source}).to_string();
        let found = r.lookup("acme.tracking-value", body.as_bytes()).unwrap();
        assert_eq!(found.entry.local_id, 4);
        assert_eq!(
            r.lookup("acme.notify.requests-value", body.as_bytes())
                .unwrap_err(),
            RegistryError::SchemaNotFound
        );
        let e = r
            .lookup("acme.tracking-value", b"{\"schema\": \"nope\"}")
            .unwrap_err();
        assert_eq!(
            e.status_and_code(),
            (StatusCode::UNPROCESSABLE_ENTITY, 42201)
        );
        let e = r.lookup("acme.tracking-value", b"[]").unwrap_err();
        assert_eq!(
            e.status_and_code(),
            (StatusCode::UNPROCESSABLE_ENTITY, 42201)
        );
        let proto = json!({"schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF"}).to_string();
        let e = r
            .lookup("acme.tracking-value", proto.as_bytes())
            .unwrap_err();
        assert_eq!(
            e.status_and_code(),
            (StatusCode::UNPROCESSABLE_ENTITY, 42201)
        );
    }

    #[test]
    fn unknown_ids_are_schema_not_found() {
        let past_the_catalog = (CATALOG.len() + 1).to_string();
        for id in ["0", past_the_catalog.as_str(), "-1", "abc", "4294967296"] {
            let e = entry_of_id(id).unwrap_err();
            assert_eq!(e, RegistryError::SchemaNotFound, "{id}");
            assert_eq!(e.status_and_code(), (StatusCode::NOT_FOUND, 40403));
            assert_eq!(e.message(), "Schema not found");
        }
        let subjects: Vec<String> = registry()
            .with_id("2")
            .unwrap()
            .iter()
            .map(|s| s.name.clone())
            .collect();
        assert!(subjects.contains(&"tidings.v1.Delivery".to_owned()));
        assert!(subjects.contains(&"acme.deliver.email-value".to_owned()));
        assert!(subjects.contains(&"acme.retry.1-value".to_owned()));
    }

    #[test]
    fn with_an_external_registry_nothing_is_served_and_the_error_names_the_setting() {
        let e = BuiltIn::unless_external(true, &Topics::new("acme")).unwrap_err();
        assert_eq!(e.status_and_code(), (StatusCode::NOT_FOUND, 40403));
        assert!(
            e.message().contains("kafka.schema_registry_url"),
            "{}",
            e.message()
        );
        assert!(BuiltIn::unless_external(false, &Topics::new("acme")).is_ok());
    }

    #[tokio::test]
    async fn errors_are_confluents_body_with_the_registry_content_type() {
        let response = RegistryError::SchemaNotFound.into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        let body = axum::body::to_bytes(response.into_body(), 10_000)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            json!({"error_code": 40403, "message": "Schema not found"})
        );
    }

    /// docs/schemas.md's id table is the one integrators read; it must name
    /// every id of the catalog with its record and file.
    #[test]
    fn the_documented_id_table_is_the_catalog() {
        let doc = include_str!("../../docs/schemas.md");
        for entry in CATALOG {
            let row = format!(
                "| {} | `{}` | `{}` |",
                entry.local_id, entry.full_name, entry.file
            );
            assert!(doc.contains(&row), "docs/schemas.md lacks the row {row}");
        }
    }

    #[test]
    fn every_catalog_schema_is_served_as_compact_json() {
        for entry in CATALOG {
            let served: Value = serde_json::from_str(compact_schema(entry)).unwrap();
            let source: Value = serde_json::from_str(entry.source).unwrap();
            assert_eq!(served, source, "{}", entry.file);
        }
    }
}
