//! A client for a Confluent-compatible schema registry (Confluent Schema
//! Registry, Confluent Cloud, Karapace, Redpanda, Apicurio's ccompat API).
//!
//! Only the two calls the codec needs are implemented:
//!
//! - `POST {base}/subjects/{subject}/versions` with `{"schema": "<json>"}`
//!   registers a schema (or finds it, if that subject already has it) and
//!   answers `{"id": N}`. The registry checks the subject's compatibility
//!   rule first and answers 409 if the schema breaks it, so registering at
//!   startup is what stops an incompatible build before it writes a record.
//! - `GET {base}/schemas/ids/{id}` answers `{"schema": "<json>"}`: how a
//!   reader learns a writer schema it was not built with.
//!
//! Errors are `{"error_code": N, "message": "..."}` with the HTTP status.
//!
//! # Subject naming: RecordNameStrategy
//!
//! The subject of a schema is the record's full Avro name (e.g.
//! `tidings.v1.Delivery`), not Confluent's default `<topic>-value`
//! (TopicNameStrategy). `Delivery` travels on every `tidings.deliver.<channel>`
//! topic and on the retry topics; under TopicNameStrategy each of those would
//! be its own subject with its own version history and compatibility check,
//! so one schema change would have to be registered (and could be refused)
//! once per topic, and a new channel would start a history from scratch. With
//! the record name as subject there is one history per record type, which is
//! what our compatibility rule (BACKWARD_TRANSITIVE, `tests/evolution.rs`) is
//! about. Kafka tooling configured with
//! `value.subject.name.strategy=io.confluent.kafka.serializers.subject.RecordNameStrategy`
//! agrees; readers that only follow the id in the wire header (most do) need
//! no configuration at all.
//!
//! # Credentials
//!
//! `https://key:secret@host` sends basic auth (Confluent Cloud uses an API key
//! and secret this way). The userinfo is removed from the URL before anything
//! else sees it, so error messages and logs show the URL without the secret.

use std::{fmt, sync::Arc, time::Duration};

use percent_encoding::percent_decode_str;
use reqwest::{StatusCode, Url, header};
use serde::Deserialize;

use crate::catalog::CatalogEntry;

/// The content type the registry's v1 API speaks.
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
/// What we accept, in the order the Confluent docs recommend clients ask.
const ACCEPT: &str = "application/vnd.schemaregistry.v1+json, application/vnd.schemaregistry+json; qs=0.9, application/json; qs=0.5";
/// One whole request. Registration happens at startup and fetches on the
/// first record with an unknown id; neither should hang a consumer.
const TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Error bodies are small JSON; the cap keeps a proxy's HTML page out of logs.
const MAX_ERROR_BODY: usize = 2_000;

/// The registry subject of a catalog schema (RecordNameStrategy: the record's
/// full name; see the module docs for why).
pub fn subject_of(entry: &CatalogEntry) -> &'static str {
    entry.full_name
}

/// What the client was doing when a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Register { subject: String },
    FetchSchema { id: u32 },
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::Register { subject } => write!(f, "registering subject {subject}"),
            Operation::FetchSchema { id } => write!(f, "fetching schema id {id}"),
        }
    }
}

/// A failed registry call, with the URL (never with credentials) and what was
/// being done. [`RegistryError::is_retriable`] tells a registry that is down
/// from one that said no.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid schema registry URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot build the schema registry HTTP client: {reason}")]
    Client { reason: String },
    /// No HTTP answer: refused, reset, timed out, TLS failure.
    #[error("{op} at {url}: {}: {reason}", if *.timed_out { "timed out" } else if *.connect { "cannot connect" } else { "request failed" })]
    Transport {
        op: Operation,
        url: String,
        connect: bool,
        timed_out: bool,
        reason: String,
    },
    /// The registry answered with an error status.
    #[error("{op} at {url}: HTTP {status}{}: {message}", .error_code.map(|c| format!(" (error_code {c})")).unwrap_or_default())]
    Rejected {
        op: Operation,
        url: String,
        status: StatusCode,
        error_code: Option<i64>,
        message: String,
    },
    /// A success status with a body that is not the registry's JSON (a proxy,
    /// a wrong base URL).
    #[error("{op} at {url}: unexpected answer: {reason}")]
    BadResponse {
        op: Operation,
        url: String,
        reason: String,
    },
    /// The id names a Protobuf or JSON Schema schema; our topics are Avro.
    #[error("{op} at {url}: schema id {id} is a {schema_type} schema, not Avro")]
    NotAvro {
        op: Operation,
        url: String,
        id: u32,
        schema_type: String,
    },
}

impl RegistryError {
    /// Whether the same call may succeed later: no answer at all, a 5xx, or
    /// rate limiting (429, which Confluent Cloud sends). Other 4xx answers
    /// (incompatible, invalid, not found, unauthorised) will not change by
    /// asking again.
    pub fn is_retriable(&self) -> bool {
        match self {
            RegistryError::Transport { .. } => true,
            RegistryError::Rejected { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
            }
            RegistryError::InvalidUrl { .. }
            | RegistryError::Client { .. }
            | RegistryError::BadResponse { .. }
            | RegistryError::NotAvro { .. } => false,
        }
    }

    /// The HTTP status, if the registry answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            RegistryError::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The registry's `error_code` (e.g. 409, 42201, 40403), if it sent one.
    pub fn error_code(&self) -> Option<i64> {
        match self {
            RegistryError::Rejected { error_code, .. } => *error_code,
            _ => None,
        }
    }

    /// The registry refused a schema as incompatible with the subject's
    /// earlier versions.
    pub fn is_incompatible(&self) -> bool {
        self.status() == Some(StatusCode::CONFLICT)
    }
}

/// A Confluent-compatible schema registry. Cheap to clone (one pooled HTTP
/// client).
#[derive(Clone)]
pub struct SchemaRegistry {
    inner: Arc<Client>,
}

struct Client {
    http: reqwest::Client,
    /// Without userinfo, always ending in `/` so relative joins keep any
    /// path prefix (a registry behind a reverse proxy at `/registry/`).
    base: Url,
    auth: Option<(String, String)>,
}

impl fmt::Debug for SchemaRegistry {
    // By hand so the password never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("url", &self.inner.base.as_str())
            .field(
                "basic_auth",
                &self.inner.auth.as_ref().map(|(user, _)| user),
            )
            .finish()
    }
}

#[derive(Deserialize)]
struct Registered {
    id: u32,
}

#[derive(Deserialize)]
struct SchemaById {
    schema: String,
    /// Absent for Avro (the registry's default type).
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: Option<i64>,
    message: Option<String>,
}

impl SchemaRegistry {
    /// A client for the registry at `url` (`http(s)://[user:pass@]host[:port][/prefix]`).
    /// Makes no request.
    pub fn new(url: &str) -> Result<Self, RegistryError> {
        let mut base = Url::parse(url.trim()).map_err(|e| RegistryError::InvalidUrl {
            url: redact(url),
            reason: e.to_string(),
        })?;
        let invalid = |base: &Url, reason: &str| RegistryError::InvalidUrl {
            url: redact(base.as_str()),
            reason: reason.to_owned(),
        };
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid(&base, "the scheme must be http or https"));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid(&base, "a query or fragment has no meaning here"));
        }
        let auth = if base.username().is_empty() && base.password().is_none() {
            None
        } else {
            // The URL keeps userinfo percent-encoded; a secret may contain
            // `:` or `@`, which must be encoded there but not in the header.
            let decode = |s: &str| percent_decode_str(s).decode_utf8().map(|c| c.into_owned());
            let user = decode(base.username())
                .map_err(|_| invalid(&base, "the user name is not UTF-8"))?;
            let pass = decode(base.password().unwrap_or_default())
                .map_err(|_| invalid(&base, "the password is not UTF-8"))?;
            Some((user, pass))
        };
        // Setting these cannot fail on an http(s) URL, which has a host.
        let _ = base.set_username("");
        let _ = base.set_password(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = build_client()?;
        Ok(Self {
            inner: Arc::new(Client { http, base, auth }),
        })
    }

    /// The base URL, without credentials.
    pub fn url(&self) -> &str {
        self.inner.base.as_str()
    }

    /// Registers `schema_json` under `subject` and returns its global id. If
    /// the subject already has this schema, the registry returns the existing
    /// id and adds no version, so calling this at every startup is safe.
    pub async fn register(&self, subject: &str, schema_json: &str) -> Result<u32, RegistryError> {
        let op = Operation::Register {
            subject: subject.to_owned(),
        };
        let url = self.url_for(&op, &["subjects", subject, "versions"])?;
        let body = serde_json::json!({ "schema": schema_json }).to_string();
        let request = self
            .inner
            .http
            .post(url.clone())
            .header(header::CONTENT_TYPE, CONTENT_TYPE)
            .body(body);
        let answer: Registered = self.call(op, &url, request).await?;
        Ok(answer.id)
    }

    /// The schema text (JSON) with global id `id`.
    pub async fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        let op = Operation::FetchSchema { id };
        let url = self.url_for(&op, &["schemas", "ids", &id.to_string()])?;
        let request = self.inner.http.get(url.clone());
        let answer: SchemaById = self.call(op.clone(), &url, request).await?;
        match answer.schema_type.as_deref() {
            None | Some("AVRO") => Ok(answer.schema),
            Some(other) => Err(RegistryError::NotAvro {
                op,
                url: url.to_string(),
                id,
                schema_type: other.to_owned(),
            }),
        }
    }

    /// `base` plus path segments, each percent-encoded (a subject is free
    /// text to the registry; `/` or `?` in one must not change the path).
    fn url_for(&self, op: &Operation, segments: &[&str]) -> Result<Url, RegistryError> {
        let mut url = self.inner.base.clone();
        url.path_segments_mut()
            .map_err(|()| RegistryError::BadResponse {
                op: op.clone(),
                url: self.url().to_owned(),
                reason: "the base URL cannot take a path".into(),
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        op: Operation,
        url: &Url,
        request: reqwest::RequestBuilder,
    ) -> Result<T, RegistryError> {
        let mut request = request.header(header::ACCEPT, ACCEPT);
        if let Some((user, pass)) = &self.inner.auth {
            request = request.basic_auth(user, Some(pass));
        }
        let url_text = url.to_string();
        let response = request.send().await.map_err(|e| RegistryError::Transport {
            op: op.clone(),
            url: url_text.clone(),
            connect: e.is_connect(),
            timed_out: e.is_timeout(),
            reason: chain(&e),
        })?;
        let status = response.status();
        // A body cut off mid-way is a transport failure like any other.
        let body = response
            .bytes()
            .await
            .map_err(|e| RegistryError::Transport {
                op: op.clone(),
                url: url_text.clone(),
                connect: false,
                timed_out: e.is_timeout(),
                reason: format!("reading the answer: {}", chain(&e)),
            })?;
        if !status.is_success() {
            let (error_code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(ErrorBody {
                    error_code,
                    message: Some(message),
                }) => (error_code, message),
                Ok(ErrorBody {
                    error_code,
                    message: None,
                }) => (error_code, String::new()),
                // Not the registry talking (a proxy, a load balancer): show
                // what it said.
                Err(_) => (None, bounded(&body)),
            };
            return Err(RegistryError::Rejected {
                op,
                url: url_text,
                status,
                error_code,
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| RegistryError::BadResponse {
            op,
            url: url_text,
            reason: format!("{e}: {}", bounded(&body)),
        })
    }
}

/// The workspace builds reqwest with `rustls-no-provider`, which panics at
/// `build()` unless a process-wide rustls crypto provider is installed. As in
/// `processors/src/senders/http.rs`, we hand reqwest a finished rustls config
/// built with ring and the platform verifier (the system's roots) instead of
/// installing a process-global default: a library should not set global state
/// the binary may set differently.
fn build_client() -> Result<reqwest::Client, RegistryError> {
    let crypto = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(Vec::new(), crypto.clone())
            .map_err(|e| RegistryError::Client {
                reason: format!("cannot load the system's root certificates: {e}"),
            })?;
    let mut tls = rustls::ClientConfig::builder_with_provider(crypto)
        .with_safe_default_protocol_versions()
        .map_err(|e| RegistryError::Client {
            reason: format!("TLS setup: {e}"),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // reqwest sets ALPN only on configs it builds itself.
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("tidings/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| RegistryError::Client { reason: chain(&e) })
}

/// reqwest's Display names only the outermost error ("error sending
/// request"); the cause (connection refused, certificate unknown) is in the
/// source chain.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn bounded(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_BODY)]).into_owned();
    if body.len() > MAX_ERROR_BODY {
        format!("{text}...")
    } else {
        text
    }
}

/// A URL as it may appear in an error: without its password. Used on input
/// that did not parse, so it works on the text.
fn redact(url: &str) -> String {
    if let Ok(mut parsed) = Url::parse(url) {
        if parsed.password().is_some() {
            let _ = parsed.set_password(Some("***"));
        }
        return parsed.to_string();
    }
    // Unparseable: drop everything up to the last `@` of the authority.
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}***@{}", &url[..scheme_end + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url_and_are_decoded() {
        let r = SchemaRegistry::new("https://key:s%40cr%3At@registry.example:8081/prefix").unwrap();
        assert_eq!(r.url(), "https://registry.example:8081/prefix/");
        assert_eq!(r.inner.auth, Some(("key".into(), "s@cr:t".into())));
        let shown = format!("{r:?}");
        assert!(
            !shown.contains("s%40cr") && !shown.contains("s@cr"),
            "{shown}"
        );
    }

    #[test]
    fn subjects_are_one_path_segment() {
        let r = SchemaRegistry::new("http://localhost:8081").unwrap();
        let op = Operation::Register {
            subject: "a/b?c".into(),
        };
        let url = r.url_for(&op, &["subjects", "a/b?c", "versions"]).unwrap();
        assert_eq!(
            url.as_str(),
            "http://localhost:8081/subjects/a%2Fb%3Fc/versions"
        );
    }

    #[test]
    fn bad_urls_are_errors_without_the_password() {
        for url in [
            "localhost:8081",
            "ftp://h",
            "http://u:pw@h/?x=1",
            "http://u:pw@[::1",
        ] {
            let e = SchemaRegistry::new(url).unwrap_err();
            assert!(matches!(e, RegistryError::InvalidUrl { .. }), "{url}: {e}");
            assert!(!e.to_string().contains("pw"), "{e}");
            assert!(!e.is_retriable());
        }
    }
}
