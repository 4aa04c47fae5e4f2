//! The HTTP clients the providers are built on: [`HyperClient`] for every
//! send to APNs, FCM, Twilio and SendGrid, reqwest (`build_client`) for the
//! rare calls (FCM's token grant) and web push; and the parts of reading an
//! HTTP answer they share: Retry-After, bounded error bodies, and transport
//! failures as [`ProviderError`].

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{StatusCode, Uri, uri::PathAndQuery};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use reqwest::header::{
    AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, InvalidHeaderValue, RETRY_AFTER,
    USER_AGENT,
};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use serde::{Deserialize, Serialize};

use super::{ProviderError, setup::SetupError};

/// Timeouts and trust for one provider's HTTP client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// One whole request, from connecting to the last byte of the answer.
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// A PEM file of CA certificates to trust besides the system's (a
    /// TLS-inspecting proxy, a staging endpoint with a private CA).
    pub extra_root_ca_path: Option<PathBuf>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            timeout_ms: 10_000,
            connect_timeout_ms: 5_000,
            extra_root_ca_path: None,
        }
    }
}

/// Which HTTP versions a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// HTTP/1.1 or HTTP/2, whichever TLS ALPN picks (plain `http://` is
    /// HTTP/1.1).
    Negotiated,
    /// HTTP/2 only: over TLS it is the one ALPN protocol offered; over plain
    /// TCP it is h2c with prior knowledge (local test servers).
    Http2Only,
}

/// Builds a pooled reqwest client, kept for the provider's lifetime, so
/// connections (and for HTTP/2 the one multiplexed connection) are reused.
///
/// The workspace builds reqwest with `rustls-no-provider`, which panics at
/// `build()` unless a rustls crypto provider is installed process-wide. We
/// hand reqwest a finished rustls config built with ring instead of calling
/// `install_default()`: a library should not set process-global state that
/// the binary or another crate may set differently, and this way every
/// provider's TLS is explicit and the same in tests and production.
pub(crate) fn build_client(
    provider: &'static str,
    settings: &HttpSettings,
    protocol: Protocol,
) -> Result<reqwest::Client, SetupError> {
    let tls = tls_config(provider, settings, protocol)?;
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_millis(settings.timeout_ms))
        .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
        .user_agent(USER_AGENT_VALUE);
    if protocol == Protocol::Http2Only {
        // Pings keep the long-lived HTTP/2 connection alive through NATs
        // and tell a dead one from an idle one before a send finds out.
        builder = builder
            .http2_prior_knowledge()
            .http2_keep_alive_interval(Duration::from_secs(60))
            .http2_keep_alive_timeout(Duration::from_secs(20))
            .http2_keep_alive_while_idle(true);
    }
    builder
        .build()
        .map_err(|e| SetupError::new(provider, format!("cannot build HTTP client: {}", chain(&e))))
}

fn tls_config(
    provider: &'static str,
    settings: &HttpSettings,
    protocol: Protocol,
) -> Result<rustls::ClientConfig, SetupError> {
    let crypto = Arc::new(rustls::crypto::ring::default_provider());
    let extra_roots = match &settings.extra_root_ca_path {
        None => Vec::new(),
        Some(path) => {
            let pem = SetupError::read(provider, "http.extra_root_ca_path", path)?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    SetupError::new(
                        provider,
                        format!("`http.extra_root_ca_path` {}: {e}", path.display()),
                    )
                })?;
            if certs.is_empty() {
                return Err(SetupError::new(
                    provider,
                    format!(
                        "`http.extra_root_ca_path` {} holds no certificate",
                        path.display()
                    ),
                ));
            }
            certs
        }
    };
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, crypto.clone())
            .map_err(|e| {
                SetupError::new(
                    provider,
                    format!("cannot load the system's root certificates: {e}"),
                )
            })?;
    let mut config = rustls::ClientConfig::builder_with_provider(crypto)
        .with_safe_default_protocol_versions()
        .map_err(|e| SetupError::new(provider, format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // reqwest sets ALPN only on configs it builds itself.
    config.alpn_protocols = match protocol {
        Protocol::Negotiated => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Protocol::Http2Only => vec![b"h2".to_vec()],
    };
    Ok(config)
}

/// A provider's endpoint, parsed once at setup, not per send. A base URL
/// that cannot be parsed is refused at startup.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint(Uri);

/// What a path segment must not hold as itself: `url`'s path-segment set
/// (controls, space, `"#<>?\`{}`, and `/` and `%`, which would change the
/// path's shape).
const PATH_SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'/')
    .add(b'%');

impl Endpoint {
    /// `text`, an absolute http(s) URL; `setting` names where it came from.
    pub(crate) fn parse(
        provider: &'static str,
        setting: &str,
        text: &str,
    ) -> Result<Self, SetupError> {
        let refuse = |why: String| SetupError::new(provider, format!("`{setting}` {text:?}{why}"));
        let url = reqwest::Url::parse(text).map_err(|e| refuse(format!(": {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(refuse(" is not an http(s) URL".into()));
        }
        // As `url` normalised it (an empty path is `/`, say).
        let uri = Uri::try_from(url.as_str()).map_err(|e| refuse(format!(": {e}")))?;
        Ok(Self(uri))
    }

    pub(crate) fn uri(&self) -> Uri {
        self.0.clone()
    }

    /// The endpoint with `segment` appended to its path, percent-encoded:
    /// it cannot climb out of the path or add a query.
    pub(crate) fn join(&self, segment: &str) -> Uri {
        let mut parts = self.0.clone().into_parts();
        let base = self.0.path().trim_end_matches('/');
        let path = format!("{base}/{}", utf8_percent_encode(segment, PATH_SEGMENT));
        let path_and_query = match self.0.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        // Every byte left unencoded is one a path may hold.
        parts.path_and_query = PathAndQuery::try_from(path_and_query).ok();
        Uri::from_parts(parts).unwrap_or_else(|_| self.0.clone())
    }
}

/// The providers' send path (APNs, FCM, Twilio, SendGrid): hyper's pooled
/// client (over HTTP/2 one multiplexed connection) without reqwest's layers
/// around each request. reqwest parses the URL once more for its redirect
/// policy, wraps the request for its retry policy and copies the headers
/// twice: its own frames were a tenth of the process's CPU samples at push
/// rates (docs/benchmarks.md, session 18). No provider redirects, and retries are the pipeline's
/// (retry topics, Retry-After), so nothing reqwest adds is lost.
pub(crate) struct HyperClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    provider: &'static str,
    /// One whole request: connecting, sending, and the answer's body.
    timeout: Duration,
}

/// An answer read whole, its body cut at [`ANSWER_CAP`] bytes.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// Answers are small JSON; a misbehaving proxy's page is cut here.
const ANSWER_CAP: usize = 64 * 1024;
/// What an error message quotes of an answer.
const QUOTED: usize = 2_000;

impl Answer {
    /// The body as text for an error message, cut at [`QUOTED`] bytes.
    pub(crate) fn text(&self) -> String {
        quote(&self.body)
    }
}

fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(QUOTED)]).into_owned();
    if bytes.len() > QUOTED {
        format!("{text}...")
    } else {
        text
    }
}

impl HyperClient {
    /// With [`Protocol::Http2Only`], plain `http://` URLs are h2c with
    /// prior knowledge (local servers).
    pub(crate) fn new(
        provider: &'static str,
        settings: &HttpSettings,
        protocol: Protocol,
    ) -> Result<Self, SetupError> {
        let mut tls = tls_config(provider, settings, protocol)?;
        // hyper-rustls sets ALPN itself, from the versions enabled below.
        tls.alpn_protocols.clear();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)));
        let versions = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let connector = match protocol {
            Protocol::Http2Only => versions.enable_http2().wrap_connector(tcp),
            Protocol::Negotiated => versions.enable_all_versions().wrap_connector(tcp),
        };
        // Pings keep the long-lived connection alive through NATs and tell
        // a dead one from an idle one before a send finds out.
        let client = Client::builder(TokioExecutor::new())
            .http2_only(protocol == Protocol::Http2Only)
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_keep_alive_interval(Duration::from_secs(60))
            .http2_keep_alive_timeout(Duration::from_secs(20))
            .http2_keep_alive_while_idle(true)
            .build(connector);
        Ok(Self {
            client,
            provider,
            timeout: Duration::from_millis(settings.timeout_ms),
        })
    }

    /// Sends `request` (method, URI and headers, as [`post`] starts them)
    /// with `body`, adding the user agent. A request that cannot be built is
    /// rejected; one that got no answer in time, or none at all, may pass.
    pub(crate) async fn send(
        &self,
        request: http::request::Builder,
        body: Bytes,
    ) -> Result<Answer, ProviderError> {
        let provider = self.provider;
        let request = request
            .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE))
            .body(Full::new(body))
            .map_err(|e| {
                ProviderError::Rejected(format!(
                    "{provider}: cannot build the request: {}",
                    chain(&e)
                ))
            })?;
        let exchange = async {
            let resp = self.client.request(request).await.map_err(|e| {
                let what = if e.is_connect() {
                    "cannot connect"
                } else {
                    "request failed"
                };
                transient(format!("{provider}: {what}: {}", chain(&e)))
            })?;
            let (parts, body) = resp.into_parts();
            let body = read_capped(body)
                .await
                .map_err(|e| transient(format!("{provider}: reading the answer: {}", chain(&e))))?;
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(transient(format!(
                "{provider}: timed out after {} ms",
                self.timeout.as_millis()
            ))),
        }
    }
}

/// A POST to `uri` of a body of `content_type`, with `authorization`; the
/// caller adds any other header.
pub(crate) fn post(
    uri: Uri,
    authorization: HeaderValue,
    content_type: &'static str,
) -> http::request::Builder {
    http::Request::builder()
        .method(http::Method::POST)
        .uri(uri)
        .header(AUTHORIZATION, authorization)
        .header(CONTENT_TYPE, HeaderValue::from_static(content_type))
}

pub(crate) const JSON: &str = "application/json";

const USER_AGENT_VALUE: &str = concat!("tidings/", env!("CARGO_PKG_VERSION"));

fn transient(reason: String) -> ProviderError {
    ProviderError::Transient {
        reason,
        retry_after: None,
    }
}

/// The body up to [`ANSWER_CAP`] bytes; the rest is not read (dropping the
/// body resets its stream).
async fn read_capped<B>(mut body: B) -> Result<Bytes, B::Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut first: Option<Bytes> = None;
    let mut more: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers
        };
        match &first {
            // Most answers are one frame: kept as it came, not copied.
            None if more.is_empty() => first = Some(data),
            _ => {
                if let Some(f) = first.take() {
                    more.extend_from_slice(&f);
                }
                more.extend_from_slice(&data);
            }
        }
        let len = first.as_ref().map_or(more.len(), Bytes::len);
        if len >= ANSWER_CAP {
            break;
        }
    }
    let mut all = match first {
        Some(f) => f,
        None => Bytes::from(more),
    };
    all.truncate(ANSWER_CAP);
    Ok(all)
}

/// `Bearer <token>` for an `Authorization` header, marked sensitive (left
/// out of Debug output and HPACK's dynamic table). Built once per token and
/// cloned into each request, which shares its bytes, rather than formatted
/// and validated for every send.
pub(crate) fn bearer(token: &str) -> Result<HeaderValue, InvalidHeaderValue> {
    let mut value = HeaderValue::try_from(format!("Bearer {token}"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// `Basic <base64(user:password)>`, as [`bearer`]: built once, sensitive.
pub(crate) fn basic(user: &str, password: &str) -> HeaderValue {
    use base64::{Engine, engine::general_purpose::STANDARD};
    let credentials = STANDARD.encode(format!("{user}:{password}"));
    let mut value = HeaderValue::try_from(format!("Basic {credentials}"))
        .expect("base64 is always a valid header value");
    value.set_sensitive(true);
    value
}

/// How long the provider asked us to wait: `Retry-After` as seconds or as
/// an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A request that never got an HTTP answer. Only a request we could not
/// even build is our fault; connect errors, timeouts and broken
/// connections may pass.
pub(crate) fn send_failed(provider: &str, e: &reqwest::Error) -> ProviderError {
    if e.is_builder() {
        return ProviderError::Rejected(format!(
            "{provider}: cannot build the request: {}",
            chain(e)
        ));
    }
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    ProviderError::Transient {
        reason: format!("{provider}: {what}: {}", chain(e)),
        retry_after: None,
    }
}

/// Reads an answer's body for error reporting. Error bodies are small JSON;
/// the cap keeps a misbehaving proxy's HTML page out of our logs.
pub(crate) async fn body_text(resp: reqwest::Response) -> String {
    match resp.bytes().await {
        Ok(bytes) => quote(&bytes),
        Err(e) => format!("<body unreadable: {}>", chain(&e)),
    }
}

/// A 429 or 5xx: the provider is busy or broken, try later.
pub(crate) fn transient_status(
    provider: &str,
    status: reqwest::StatusCode,
    headers: &HeaderMap,
    detail: &str,
) -> ProviderError {
    ProviderError::Transient {
        reason: format!("{provider}: {status}: {detail}"),
        retry_after: retry_after(headers),
    }
}

/// reqwest's Display names only the outermost error ("error sending
/// request"); the cause (connection refused, certificate unknown) is in the
/// source chain.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A target (token, number) shortened for error messages: enough to find
/// it, without copying whole device tokens into every log line.
pub(crate) fn short(target: &str) -> String {
    match target.char_indices().nth(12) {
        Some((i, _)) => format!("{}...", &target[..i]),
        None => target.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_parsed_at_setup_and_joined_by_segment() {
        let devices = Endpoint::parse("apns", "base_url", "http://127.0.0.1:8443/3/device")
            .expect("an http URL");
        assert_eq!(
            devices.join("a1b2").to_string(),
            "http://127.0.0.1:8443/3/device/a1b2"
        );
        // A segment cannot climb out of the path or add a query.
        assert_eq!(
            devices.join("../x?y").to_string(),
            "http://127.0.0.1:8443/3/device/..%2Fx%3Fy"
        );
        // Encoded as `url` encodes a path segment.
        for segment in ["a b", "%41", "é/ü", "x#y", "{}`\"\u{7f}", "~!$&'()*+,;=:@"] {
            let mut expected =
                reqwest::Url::parse("http://127.0.0.1:8443/3/device").expect("a URL");
            expected
                .path_segments_mut()
                .expect("http URL")
                .push(segment);
            assert_eq!(
                devices.join(segment).to_string(),
                expected.as_str(),
                "{segment:?}"
            );
        }
        let send = Endpoint::parse(
            "fcm",
            "base_url",
            "https://fcm.example/v1/projects/p/messages:send",
        )
        .expect("an https URL");
        assert_eq!(
            send.uri().to_string(),
            "https://fcm.example/v1/projects/p/messages:send"
        );
        for bad in [
            "api.push.apple.com/3/device",
            "mailto:ops@example.com",
            "ftp://x/y",
        ] {
            let e = Endpoint::parse("apns", "base_url", bad).expect_err(bad);
            assert!(e.to_string().contains("`base_url`"), "{e}");
        }
    }

    /// A body of several frames is joined; past the cap it is cut.
    #[tokio::test]
    async fn answers_are_read_whole_up_to_the_cap() {
        use http_body_util::StreamBody;
        let body = |chunks: Vec<Vec<u8>>| {
            StreamBody::new(futures::stream::iter(chunks.into_iter().map(|c| {
                Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(c)))
            })))
        };
        let one = read_capped(body(vec![b"{\"name\":1}".to_vec()]))
            .await
            .unwrap();
        assert_eq!(&one[..], b"{\"name\":1}");
        let parts = read_capped(body(vec![b"ab".to_vec(), b"cd".to_vec(), vec![]]))
            .await
            .unwrap();
        assert_eq!(&parts[..], b"abcd");
        let huge = read_capped(body(vec![
            vec![b'x'; ANSWER_CAP - 1],
            vec![b'y'; 10],
            vec![b'z'; 10],
        ]))
        .await
        .unwrap();
        assert_eq!(huge.len(), ANSWER_CAP);
        assert_eq!(huge[ANSWER_CAP - 1], b'y');
        let quoted = Answer {
            status: StatusCode::BAD_GATEWAY,
            headers: HeaderMap::new(),
            body: huge,
        }
        .text();
        assert_eq!(quoted.len(), QUOTED + 3, "cut and marked");
    }

    #[test]
    fn bearer_values_are_sensitive_and_refuse_line_breaks() {
        let v = bearer("abc.def").expect("a JWT is a header value");
        assert_eq!(v, "Bearer abc.def");
        assert!(v.is_sensitive());
        assert!(bearer("abc\r\nX-Injected: 1").is_err());
        // RFC 7617's example.
        let v = basic("Aladdin", "open sesame");
        assert_eq!(v, "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert!(v.is_sensitive());
    }

    #[test]
    fn retry_after_as_seconds_or_date() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&later).expect("date is ASCII"),
        );
        let got = retry_after(&h).expect("a date parses");
        assert!(
            got > Duration::from_secs(100) && got <= Duration::from_secs(120),
            "{got:?}"
        );
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn clients_build_without_a_process_wide_crypto_provider() {
        for p in [Protocol::Negotiated, Protocol::Http2Only] {
            build_client("test", &HttpSettings::default(), p).expect("client builds");
            HyperClient::new("test", &HttpSettings::default(), p).expect("client builds");
        }
    }

    #[test]
    fn short_targets() {
        assert_eq!(short("abc"), "abc");
        assert_eq!(short("0123456789abcdef"), "0123456789ab...");
    }
}
