//! The provider stand-ins `tidings bench` sends to, and the bare client it
//! compares tidings with.
//!
//! One server speaks every protocol the bench drives: Twilio's form API,
//! FCM HTTP v1 with Google's OAuth token endpoint, and APNs (`POST
//! /3/device/{token}`). Push is served over TLS with ALPN `h2`, as Google and
//! Apple do, with a certificate for their host names as well as 127.0.0.1,
//! so the same server stands in for tidings (by address), for the bare
//! client, and for gorush (which cannot be pointed elsewhere: it reaches it
//! through a private /etc/hosts, see scripts/bench-gorush.sh). It runs
//! inside `tidings bench`, or alone as `tidings bench-provider`.
//!
//! Each message carries `bench <seq>` as its text; the server records when
//! each sequence number arrived (Unix microseconds, so a bench in another
//! process on the same machine can compare its own clock) and counts every
//! message, numbered or not.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use axum::{
    Form, Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
    serve::Listener,
};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};

/// Bench-only credentials, made with `openssl` for this and nothing else:
/// a CA, the stand-in's certificate from it (127.0.0.1, localhost and the
/// FCM, Google OAuth and APNs host names), an RSA key for the FCM service
/// account and a P-256 key for APNs token auth.
const CA_PEM: &str = include_str!("bench_providers/ca.pem");
const SERVER_PEM: &str = include_str!("bench_providers/server.pem");
const SERVER_KEY: &str = include_str!("bench_providers/server.key");
const FCM_KEY: &str = include_str!("bench_providers/fcm-key.pem");
const APNS_KEY: &str = include_str!("bench_providers/apns-key.p8");

pub const FCM_PROJECT: &str = "tidings-bench";
const FCM_CLIENT_EMAIL: &str = "bench@tidings-bench.iam.gserviceaccount.com";
const FCM_ACCESS_TOKEN: &str = "ya29.bench-access-token";
pub const APNS_TEAM_ID: &str = "TEAMBENCH1";
pub const APNS_KEY_ID: &str = "KEYBENCH01";
pub const APNS_TOPIC: &str = "com.example.tidings.bench";

/// Which provider the bench delivers through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchChannel {
    /// Twilio's API over HTTP/1.1, through the Twilio client.
    Sms,
    /// FCM HTTP v1 over TLS and HTTP/2, through the FCM client.
    Android,
    /// APNs over TLS and HTTP/2 with token auth, through the APNs client.
    Ios,
    /// SendGrid's v3 Mail Send API over TLS, through the SendGrid client.
    Email,
    /// The design's daily mix, 10M push : 1M SMS : 5M email, push split
    /// evenly between Android and iOS: of every 16 notifications 5 go to
    /// Android, 5 to iOS, 1 by SMS and 5 by email, all over TLS.
    Mix,
}

/// Of every [`MIX_PERIOD`] notifications of a mixed run, how many each
/// channel delivers.
const MIX: [(BenchChannel, u64); 4] = [
    (BenchChannel::Android, 5),
    (BenchChannel::Ios, 5),
    (BenchChannel::Sms, 1),
    (BenchChannel::Email, 5),
];
const MIX_PERIOD: u64 = 16;

impl BenchChannel {
    /// The run's name, and for a single channel its `[providers.<name>]`
    /// key.
    pub fn provider_key(self) -> &'static str {
        match self {
            BenchChannel::Sms => "sms",
            BenchChannel::Android => "android",
            BenchChannel::Ios => "ios",
            BenchChannel::Email => "email",
            BenchChannel::Mix => "mix",
        }
    }

    /// The single channels a run delivers through.
    pub fn delivers(self) -> Vec<BenchChannel> {
        match self {
            BenchChannel::Mix => MIX.iter().map(|(c, _)| *c).collect(),
            single => vec![single],
        }
    }

    /// The single channel notification `seq` of the run goes through.
    pub fn of_seq(self, seq: u64) -> BenchChannel {
        if self != BenchChannel::Mix {
            return self;
        }
        let mut slot = seq % MIX_PERIOD;
        for (channel, share) in MIX {
            if slot < share {
                return channel;
            }
            slot -= share;
        }
        unreachable!("the shares add up to MIX_PERIOD")
    }

    /// Everything but SMS alone is served over TLS (HTTP/2 or HTTP/1.1 by
    /// ALPN); SMS alone over plain HTTP/1.1, as before the mix existed.
    pub fn uses_tls(self) -> bool {
        self != BenchChannel::Sms
    }
}

/// Unix time in microseconds: comparable across processes on one machine.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What the stand-in received: arrival time by sequence number, and a count
/// of every message.
#[derive(Clone, Default)]
pub struct Receipts {
    by_seq: Arc<Mutex<HashMap<u64, u64>>>,
    count: Arc<AtomicU64>,
    last_us: Arc<AtomicU64>,
}

impl Receipts {
    fn record(&self, text: Option<&str>) {
        let at = unix_micros();
        self.count.fetch_add(1, Ordering::Relaxed);
        self.last_us.fetch_max(at, Ordering::Relaxed);
        if let Some(seq) = text.and_then(sequence) {
            self.by_seq
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(seq, at);
        }
    }

    pub fn delivered(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.by_seq
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&seq)
    }

    pub fn snapshot(&self) -> HashMap<u64, u64> {
        self.by_seq
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn reset(&self) {
        self.by_seq
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.count.store(0, Ordering::Relaxed);
        self.last_us.store(0, Ordering::Relaxed);
    }
}

/// `bench <seq>` → seq.
fn sequence(text: &str) -> Option<u64> {
    text.strip_prefix("bench ")?.parse().ok()
}

/// The in-process stand-in, or one in another process at an address.
pub enum StandIn {
    InProcess {
        addr: SocketAddr,
        receipts: Receipts,
    },
    Remote {
        addr: SocketAddr,
        http: reqwest::Client,
    },
}

impl StandIn {
    pub async fn start(channel: BenchChannel) -> Result<Self> {
        let receipts = Receipts::default();
        let addr = serve(
            "127.0.0.1:0".parse().expect("address"),
            channel.uses_tls(),
            receipts.clone(),
        )
        .await?;
        Ok(StandIn::InProcess { addr, receipts })
    }

    /// A `tidings bench-provider` at `addr` (TLS).
    pub fn remote(addr: SocketAddr) -> Result<Self> {
        Ok(StandIn::Remote {
            addr,
            http: bare_http_client(HttpVersion::Negotiated)?,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        match self {
            StandIn::InProcess { addr, .. } | StandIn::Remote { addr, .. } => *addr,
        }
    }

    /// SMS alone is plain HTTP/1.1 in process; a `tidings bench-provider`
    /// serves every channel over TLS, SMS as in the mix.
    pub fn base_url(&self, channel: BenchChannel) -> String {
        let tls = channel.uses_tls() || matches!(self, StandIn::Remote { .. });
        let scheme = if tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr())
    }

    async fn stats(&self) -> Result<Stats> {
        match self {
            StandIn::InProcess { receipts, .. } => Ok(Stats {
                delivered: receipts.delivered(),
                last_us: receipts.last_us.load(Ordering::Relaxed),
            }),
            StandIn::Remote { addr, http } => Ok(http
                .get(format!("https://{addr}/bench/stats"))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?),
        }
    }

    pub async fn delivered(&self) -> Result<u64> {
        Ok(self.stats().await?.delivered)
    }

    pub async fn contains(&self, seq: u64) -> Result<bool> {
        Ok(self.receipts().await?.contains_key(&seq))
    }

    pub async fn receipts(&self) -> Result<HashMap<u64, u64>> {
        match self {
            StandIn::InProcess { receipts, .. } => Ok(receipts.snapshot()),
            StandIn::Remote { addr, http } => Ok(http
                .get(format!("https://{addr}/bench/receipts"))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?),
        }
    }

    pub async fn reset(&self) -> Result<()> {
        match self {
            StandIn::InProcess { receipts, .. } => receipts.reset(),
            StandIn::Remote { addr, http } => {
                http.post(format!("https://{addr}/bench/reset"))
                    .send()
                    .await?
                    .error_for_status()?;
            }
        }
        Ok(())
    }
}

#[derive(serde::Serialize, Deserialize)]
struct Stats {
    delivered: u64,
    /// When the last message arrived (Unix microseconds; 0: none yet).
    last_us: u64,
}

/// `[providers.<channel>]` for tidings (a single channel), pointing at the
/// stand-in at `base_url`, trusting the bench CA written to `ca_path`.
pub fn provider_config(
    channel: BenchChannel,
    base_url: &str,
    ca_path: &Path,
    max_in_flight: usize,
) -> serde_json::Value {
    let limits = json!({"max_in_flight": max_in_flight});
    let http = json!({"extra_root_ca_path": ca_path});
    match channel {
        BenchChannel::Sms => json!({
            "kind": "twilio",
            "account_sid": "ACbench",
            "auth_token": "bench",
            "from": "+14155550100",
            "base_url": base_url,
            "http": http,
            "limits": limits,
        }),
        BenchChannel::Email => json!({
            "kind": "sendgrid",
            "api_key": "SG.bench",
            "from_email": "bench@example.com",
            "base_url": base_url,
            "http": http,
            "limits": limits,
        }),
        BenchChannel::Mix => unreachable!("a mixed run configures each of its channels"),
        BenchChannel::Android => json!({
            "kind": "fcm",
            "service_account_json": service_account(&format!("{base_url}/token")),
            "base_url": base_url,
            "http": http,
            "limits": limits,
        }),
        BenchChannel::Ios => json!({
            "kind": "apns",
            "base_url": base_url,
            "transport": "tls",
            "team_id": APNS_TEAM_ID,
            "key_id": APNS_KEY_ID,
            "key_pem": APNS_KEY,
            "topic": APNS_TOPIC,
            "http": http,
            "limits": limits,
        }),
    }
}

/// A Google service-account key file whose token endpoint is `token_uri`.
fn service_account(token_uri: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": FCM_PROJECT,
        "private_key_id": "bench0000000000000000",
        "private_key": FCM_KEY,
        "client_email": FCM_CLIENT_EMAIL,
        "client_id": "100000000000000000000",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    })
    .to_string()
}

/// Writes the CA (`ca.pem`), an FCM service account for Google's real token
/// host (`service-account.json`) and the APNs key (`apns-key.p8`) into
/// `dir`: what a push server reaching the stand-in by Google's and Apple's
/// host names is configured with.
pub fn write_credentials(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in [
        ("ca.pem", CA_PEM.to_owned()),
        (
            "service-account.json",
            service_account("https://oauth2.googleapis.com/token"),
        ),
        ("apns-key.p8", APNS_KEY.to_owned()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Writes the bench CA to a temporary file for `http.extra_root_ca_path`.
pub fn write_ca(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("bench-ca.pem");
    std::fs::write(&path, CA_PEM).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Starts the stand-in on `listen` (TLS or plain) and returns its address.
pub async fn serve(listen: SocketAddr, tls: bool, receipts: Receipts) -> Result<SocketAddr> {
    let tcp = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the provider stand-in to {listen}"))?;
    let addr = tcp.local_addr()?;
    let app = router(receipts);
    if tls {
        let listener = TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(server_tls_config()?)),
        };
        tokio::spawn(async move { axum::serve(listener, app).await });
    } else {
        tokio::spawn(async move { axum::serve(tcp, app).await });
    }
    Ok(addr)
}

fn router(receipts: Receipts) -> Router {
    Router::new()
        .route(
            "/2010-04-01/Accounts/{sid}/Messages.json",
            post(twilio_messages),
        )
        .route("/token", post(oauth_token))
        .route("/v1/projects/{project}/messages:send", post(fcm_send))
        .route("/3/device/{token}", post(apns_push))
        .route("/v3/mail/send", post(sendgrid_send))
        .route("/bench/stats", get(bench_stats))
        .route("/bench/receipts", get(bench_receipts))
        .route("/bench/reset", post(bench_reset))
        .with_state(receipts)
}

async fn twilio_messages(
    State(receipts): State<Receipts>,
    Form(form): Form<HashMap<String, String>>,
) -> (StatusCode, Json<serde_json::Value>) {
    receipts.record(form.get("Body").map(String::as_str));
    (
        StatusCode::CREATED,
        Json(json!({"sid": "SMbench", "status": "queued"})),
    )
}

/// Google's token endpoint: any JWT bearer grant gets the one token (the
/// bench measures sending, not OAuth; the FCM tests check the grant).
async fn oauth_token() -> Json<serde_json::Value> {
    Json(json!({"access_token": FCM_ACCESS_TOKEN, "expires_in": 3599, "token_type": "Bearer"}))
}

#[derive(Deserialize)]
struct FcmSend {
    message: FcmMessage,
}

#[derive(Deserialize)]
struct FcmMessage {
    #[serde(default)]
    notification: Option<FcmNotification>,
}

#[derive(Deserialize)]
struct FcmNotification {
    #[serde(default)]
    body: Option<String>,
}

async fn fcm_send(State(receipts): State<Receipts>, headers: HeaderMap, body: Bytes) -> Response {
    if !has_bearer(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}})),
        )
            .into_response();
    }
    let Ok(send) = serde_json::from_slice::<FcmSend>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"code": 400, "status": "INVALID_ARGUMENT"}})),
        )
            .into_response();
    };
    receipts.record(
        send.message
            .notification
            .as_ref()
            .and_then(|n| n.body.as_deref()),
    );
    Json(json!({"name": format!("projects/{FCM_PROJECT}/messages/0:bench")})).into_response()
}

#[derive(Deserialize)]
struct ApnsPayload {
    aps: Aps,
}

#[derive(Deserialize)]
struct Aps {
    #[serde(default)]
    alert: Option<ApnsAlert>,
}

/// Apple takes the alert as a string or as `{title, body}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum ApnsAlert {
    Text(String),
    Fields {
        #[serde(default)]
        body: Option<String>,
    },
}

async fn apns_push(State(receipts): State<Receipts>, headers: HeaderMap, body: Bytes) -> Response {
    if !has_bearer(&headers) || !headers.contains_key("apns-topic") {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"reason": "MissingProviderToken"})),
        )
            .into_response();
    }
    let Ok(payload) = serde_json::from_slice::<ApnsPayload>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"reason": "PayloadEmpty"})),
        )
            .into_response();
    };
    receipts.record(match &payload.aps.alert {
        Some(ApnsAlert::Text(text)) => Some(text.as_str()),
        Some(ApnsAlert::Fields { body }) => body.as_deref(),
        None => None,
    });
    (
        StatusCode::OK,
        [("apns-id", "00000000-0000-4000-8000-000000000000")],
    )
        .into_response()
}

#[derive(Deserialize)]
struct SendGridMail {
    #[serde(default)]
    content: Vec<SendGridContent>,
}

#[derive(Deserialize)]
struct SendGridContent {
    #[serde(rename = "type")]
    kind: String,
    value: String,
}

/// SendGrid's Mail Send: 202 with no body, as the real one answers.
async fn sendgrid_send(
    State(receipts): State<Receipts>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !has_bearer(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"errors": [{"message": "authorization required"}]})),
        )
            .into_response();
    }
    let Ok(mail) = serde_json::from_slice::<SendGridMail>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"errors": [{"message": "bad request body"}]})),
        )
            .into_response();
    };
    receipts.record(
        mail.content
            .iter()
            .find(|c| c.kind == "text/plain")
            .map(|c| c.value.as_str()),
    );
    (StatusCode::ACCEPTED, [("x-message-id", "bench-message-id")]).into_response()
}

fn has_bearer(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "))
}

async fn bench_stats(State(receipts): State<Receipts>) -> Json<Stats> {
    Json(Stats {
        delivered: receipts.delivered(),
        last_us: receipts.last_us.load(Ordering::Relaxed),
    })
}

async fn bench_receipts(State(receipts): State<Receipts>) -> Json<HashMap<u64, u64>> {
    Json(receipts.snapshot())
}

async fn bench_reset(State(receipts): State<Receipts>) -> StatusCode {
    receipts.reset();
    StatusCode::NO_CONTENT
}

fn server_tls_config() -> Result<rustls::ServerConfig> {
    let certs = CertificateDer::pem_slice_iter(SERVER_PEM.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the stand-in's certificate")?;
    let key = PrivateKeyDer::from_pem_slice(SERVER_KEY.as_bytes()).context("the stand-in's key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Completes the TLS handshake before axum sees a connection; a failed
/// handshake drops that connection only. Handshakes are few: each client
/// keeps one HTTP/2 connection (or a small pool).
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HttpVersion {
    /// HTTP/2 by ALPN over TLS, HTTP/1.1 over plain TCP.
    Negotiated,
    /// HTTP/2 only, as the APNs client.
    Http2Only,
}

/// A reqwest client trusting only the bench CA.
fn bare_http_client(version: HttpVersion) -> Result<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(CA_PEM.as_bytes()) {
        roots.add(cert?)?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = match version {
        HttpVersion::Negotiated => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        HttpVersion::Http2Only => vec![b"h2".to_vec()],
    };
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(10));
    if version == HttpVersion::Http2Only {
        builder = builder.http2_prior_knowledge();
    }
    Ok(builder.build()?)
}

/// What the bare client did.
pub struct BareRun {
    pub sent: usize,
    pub elapsed: Duration,
    pub cpu: Duration,
}

/// The floor: `count` requests of the channel's protocol straight to the
/// stand-in, `concurrency` in flight, with nothing else in the process
/// doing work. Texts are `bench <seq>` from `first_seq`, so they count at
/// the stand-in as tidings' do.
pub async fn bare_client(
    channel: BenchChannel,
    base_url: &str,
    count: usize,
    concurrency: usize,
    first_seq: u64,
) -> Result<BareRun> {
    // One client per provider, as tidings has: APNs speaks HTTP/2 only.
    let negotiated = bare_http_client(HttpVersion::Negotiated)?;
    let apns = bare_http_client(HttpVersion::Http2Only)?;
    let fcm_url = format!("{base_url}/v1/projects/{FCM_PROJECT}/messages:send");
    let twilio_url = format!("{base_url}/2010-04-01/Accounts/ACbench/Messages.json");
    let sendgrid_url = format!("{base_url}/v3/mail/send");
    // FCM: one access token for the run, as any client caches it.
    let fcm_bearer = if channel.delivers().contains(&BenchChannel::Android) {
        #[derive(Deserialize)]
        struct Grant {
            access_token: String,
        }
        let grant: Grant = negotiated
            .post(format!("{base_url}/token"))
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", "bench"),
            ])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        grant.access_token
    } else {
        String::new()
    };
    // The APNs stand-in checks that a provider token is there, not its
    // signature.
    let apns_bearer = "bench.provider.token";
    let cpu_before = process_cpu();
    let started = Instant::now();
    let results: Vec<Result<()>> = futures::stream::iter(0..count as u64)
        .map(|i| {
            let seq = first_seq + i;
            let text = format!("bench {seq}");
            let request = match channel.of_seq(seq) {
                BenchChannel::Sms => negotiated
                    .post(&twilio_url)
                    .basic_auth("ACbench", Some("bench"))
                    .form(&[
                        ("To", "+14155550123"),
                        ("From", "+14155550100"),
                        ("Body", &text),
                    ]),
                BenchChannel::Android => negotiated.post(&fcm_url).bearer_auth(&fcm_bearer).json(&json!({
                    "message": {
                        "token": format!("bench-device-{seq}"),
                        "notification": {"title": "bench", "body": text},
                        "android": {"priority": "NORMAL"},
                    }
                })),
                BenchChannel::Ios => apns
                    .post(format!("{base_url}/3/device/{seq:064x}"))
                    .bearer_auth(apns_bearer)
                    .header("apns-topic", APNS_TOPIC)
                    .header("apns-push-type", "alert")
                    .header("apns-priority", "5")
                    .json(&json!({"aps": {"alert": {"title": "bench", "body": text}}})),
                BenchChannel::Email => negotiated
                    .post(&sendgrid_url)
                    .bearer_auth("SG.bench")
                    .json(&json!({
                        "personalizations": [{"to": [{"email": format!("bench-{seq}@example.com")}]}],
                        "from": {"email": "bench@example.com"},
                        "subject": "bench",
                        "content": [{"type": "text/plain", "value": text}],
                    })),
                BenchChannel::Mix => unreachable!("of_seq names a single channel"),
            };
            async move {
                let resp = request.send().await?;
                let status = resp.status();
                // Read the answer as the provider clients do.
                let _ = resp.bytes().await?;
                if !status.is_success() {
                    bail!("the stand-in answered {status}");
                }
                Ok(())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let elapsed = started.elapsed();
    let cpu = process_cpu().saturating_sub(cpu_before);
    let sent = results.iter().filter(|r| r.is_ok()).count();
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        bail!("bare client: {e:#}");
    }
    Ok(BareRun { sent, elapsed, cpu })
}

/// User and system CPU time of this process so far (all threads).
pub fn process_cpu() -> Duration {
    let usage = rusage();
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// The process's peak resident set, in MiB.
pub fn peak_rss_mib() -> f64 {
    // ru_maxrss is in KiB on Linux.
    rusage().ru_maxrss as f64 / 1024.0
}

fn rusage() -> libc::rusage {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given, and zeroed is a valid
    // rusage should it fail.
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    }
}

/// CPU ticks per thread name (tokio workers share one name, so they add
/// up), from /proc/self/task/*/stat: where a run's CPU went.
pub fn thread_cpu() -> HashMap<String, u64> {
    let mut by_name = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        if let Some((name, ticks)) = parse_task_stat(&stat) {
            *by_name.entry(name).or_insert(0) += ticks;
        }
    }
    by_name
}

/// `pid (comm) state ... utime stime ...` → (comm, utime + stime). The
/// name may hold spaces and parentheses, so it ends at the last `)`.
fn parse_task_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the name: state is field 3 of stat(5), utime 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// Thread names by share of the CPU used between two [`thread_cpu`]
/// readings, largest first; threads that ended in between are not counted.
pub fn thread_cpu_shares(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
) -> Vec<(String, f64)> {
    let deltas: Vec<(String, u64)> = after
        .iter()
        .map(|(name, t)| {
            (
                name.clone(),
                t.saturating_sub(before.get(name).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, d)| *d > 0)
        .collect();
    let total: u64 = deltas.iter().map(|(_, d)| d).sum();
    let mut shares: Vec<(String, f64)> = deltas
        .into_iter()
        .map(|(n, d)| (n, d as f64 / total.max(1) as f64))
        .collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    shares
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchProviderOptions {
    /// Where to listen (TLS; HTTP/2 or HTTP/1.1 by ALPN). The gorush script
    /// runs it on 127.0.0.1:443 in a network namespace of its own.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Write the CA, an FCM service account for oauth2.googleapis.com and
    /// the APNs key into this directory first (for gorush's configuration).
    #[arg(long)]
    pub credentials_dir: Option<PathBuf>,
}

/// `tidings bench-provider`: the stand-in alone, until interrupted.
pub async fn run_provider(options: BenchProviderOptions) -> Result<()> {
    if let Some(dir) = &options.credentials_dir {
        write_credentials(dir)?;
    }
    let addr = serve(options.listen, true, Receipts::default()).await?;
    println!("bench-provider: listening on https://{addr} (FCM, Google OAuth, APNs, Twilio)");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mixed_run_follows_the_designs_daily_ratio() {
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for seq in 0..1600 {
            *counts
                .entry(BenchChannel::Mix.of_seq(seq).provider_key())
                .or_default() += 1;
        }
        // 10M push : 1M SMS : 5M email, push half Android and half iOS.
        assert_eq!(counts["android"], 500);
        assert_eq!(counts["ios"], 500);
        assert_eq!(counts["sms"], 100);
        assert_eq!(counts["email"], 500);
        assert_eq!(BenchChannel::Email.of_seq(7), BenchChannel::Email);
        assert_eq!(BenchChannel::Mix.delivers().len(), 4);
    }

    #[test]
    fn sequence_numbers_are_read_from_bench_texts_only() {
        assert_eq!(sequence("bench 42"), Some(42));
        assert_eq!(sequence("bench"), None);
        assert_eq!(sequence("hello 42"), None);
    }

    #[test]
    fn task_stat_names_may_hold_spaces_and_parentheses() {
        let stat = "12 (tokio (w) 1) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0 20 0 1 0";
        assert_eq!(parse_task_stat(stat), Some(("tokio (w) 1".into(), 280)));
    }

    #[test]
    fn shares_are_of_the_cpu_used_in_between() {
        let before = HashMap::from([("a".to_string(), 10), ("b".to_string(), 5)]);
        let after = HashMap::from([("a".to_string(), 40), ("b".to_string(), 15)]);
        let shares = thread_cpu_shares(&before, &after);
        assert_eq!(shares[0].0, "a");
        assert!((shares[0].1 - 0.75).abs() < 1e-9);
    }

    /// The bare client against the stand-in on every channel: each message
    /// arrives once, numbered, over TLS and HTTP/2 for push.
    #[tokio::test]
    async fn the_bare_client_reaches_the_stand_in_on_every_channel() {
        for channel in [BenchChannel::Sms, BenchChannel::Android, BenchChannel::Ios] {
            let stand_in = StandIn::start(channel).await.expect("stand-in");
            let run = bare_client(channel, &stand_in.base_url(channel), 50, 8, 1000)
                .await
                .expect("bare client");
            assert_eq!(run.sent, 50, "{channel:?}");
            assert_eq!(
                stand_in.delivered().await.expect("stats"),
                50,
                "{channel:?}"
            );
            let receipts = stand_in.receipts().await.expect("receipts");
            assert!(
                (1000..1050).all(|s| receipts.contains_key(&s)),
                "{channel:?}"
            );
        }
    }

    /// Served over TLS, the stand-in answers a client that trusts only the
    /// bench CA and reaches it by Google's host name, as gorush does.
    #[tokio::test]
    async fn the_certificate_names_the_provider_hosts() {
        let stand_in = StandIn::start(BenchChannel::Android)
            .await
            .expect("stand-in");
        let addr = stand_in.addr();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured({
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(CA_PEM.as_bytes()) {
                    roots.add(cert.expect("CA")).expect("root");
                }
                let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
                tls.alpn_protocols = vec![b"h2".to_vec()];
                tls
            })
            .resolve("fcm.googleapis.com", addr)
            .resolve("api.push.apple.com", addr)
            .build()
            .expect("client");
        for host in ["fcm.googleapis.com", "api.push.apple.com"] {
            let resp = client
                .get(format!("https://{host}:{}/bench/stats", addr.port()))
                .send()
                .await
                .expect("TLS to the stand-in by the provider's name");
            assert_eq!(resp.version(), reqwest::Version::HTTP_2);
            assert!(resp.status().is_success());
        }
    }
}
