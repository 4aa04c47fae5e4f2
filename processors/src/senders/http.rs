//! The HTTP client every HTTP provider (APNs, FCM, Twilio, SendGrid) is built
//! on, and the parts of reading an HTTP answer they share: Retry-After,
//! bounded error bodies, and transport failures as [`ProviderError`].

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use reqwest::header::{HeaderMap, HeaderValue, InvalidHeaderValue, RETRY_AFTER};
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

/// Builds the one pooled client a provider keeps for its lifetime, so
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
        .user_agent(concat!("tidings/", env!("CARGO_PKG_VERSION")));
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

/// A provider's endpoint, parsed once at setup: reqwest parses a URL given
/// as text on every request (host and all), a few percent of a send's CPU.
/// A base URL that cannot be parsed is refused at startup, not per send.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint(reqwest::Url);

impl Endpoint {
    /// `text`, an absolute http(s) URL; `setting` names where it came from.
    pub(crate) fn parse(
        provider: &'static str,
        setting: &str,
        text: &str,
    ) -> Result<Self, SetupError> {
        let url = reqwest::Url::parse(text)
            .map_err(|e| SetupError::new(provider, format!("`{setting}` {text:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(SetupError::new(
                provider,
                format!("`{setting}` {text:?} is not an http(s) URL"),
            ));
        }
        Ok(Self(url))
    }

    pub(crate) fn url(&self) -> reqwest::Url {
        self.0.clone()
    }

    /// The endpoint with `segment` appended to its path, percent-encoded.
    pub(crate) fn join(&self, segment: &str) -> reqwest::Url {
        let mut url = self.0.clone();
        // An http(s) URL always has path segments (checked in `parse`).
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push(segment);
        }
        url
    }
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
    const MAX: usize = 2_000;
    match resp.bytes().await {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]).into_owned();
            if bytes.len() > MAX {
                format!("{text}...")
            } else {
                text
            }
        }
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
            devices.join("a1b2").as_str(),
            "http://127.0.0.1:8443/3/device/a1b2"
        );
        // A segment cannot climb out of the path or add a query.
        assert_eq!(
            devices.join("../x?y").as_str(),
            "http://127.0.0.1:8443/3/device/..%2Fx%3Fy"
        );
        let send = Endpoint::parse(
            "fcm",
            "base_url",
            "https://fcm.example/v1/projects/p/messages:send",
        )
        .expect("an https URL");
        assert_eq!(
            send.url().as_str(),
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
        }
    }

    #[test]
    fn short_targets() {
        assert_eq!(short("abc"), "abc");
        assert_eq!(short("0123456789abcdef"), "0123456789ab...");
    }
}
