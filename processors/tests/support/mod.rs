//! Local stand-ins for the providers, speaking each one's real wire protocol
//! (paths, auth, content types, error bodies), so the provider clients run
//! unchanged against them. HTTP providers share [`FakeServer`]: it records
//! every request, counts requests in flight, and lets a test queue the next
//! answers; the protocol itself lives in one module per provider.

#![allow(dead_code)] // each test module uses a different part

pub mod apns;
pub mod fcm;
pub mod sender;
pub mod sendgrid;
pub mod smtp;
pub mod twilio;
pub mod webpush;

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, Version},
    response::Response,
    serve::Listener,
};
use base64::Engine;
use serde_json::Value;
use tidings_schemas::records::{Delivery, Priority};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// Path and query.
    pub path: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The client's address: the same port means the same connection.
    /// (Not known behind the TLS listener.)
    pub peer: Option<SocketAddr>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub fn form(&self) -> BTreeMap<String, String> {
        serde_urlencoded::from_bytes(&self.body).unwrap_or_default()
    }

    pub fn bearer(&self) -> Option<&str> {
        let auth = self.header("authorization")?;
        auth.strip_prefix("bearer ")
            .or_else(|| auth.strip_prefix("Bearer "))
    }

    pub fn content_type_is(&self, expected: &str) -> bool {
        self.header("content-type").is_some_and(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case(expected)
        })
    }
}

/// An answer to give.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn empty(status: u16) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn json(status: u16, body: Value) -> Self {
        let mut r = Self::empty(status);
        r.body = body.to_string().into_bytes();
        r.header("content-type", "application/json")
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// What every fake server keeps, whatever its protocol.
#[derive(Default)]
pub struct Shared {
    requests: Mutex<Vec<Recorded>>,
    script: Mutex<VecDeque<Reply>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    delay_ms: AtomicU64,
}

impl Shared {
    /// The next queued answer, if a test queued one. Protocol handlers call
    /// this after their own checks pass, as a real server fails for load or
    /// state only on requests it understood.
    pub fn next_scripted(&self) -> Option<Reply> {
        self.script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }
}

type Handler<S> = fn(&Recorded, &S, &Shared) -> Reply;

pub struct FakeServer<S> {
    pub addr: SocketAddr,
    pub state: Arc<S>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    tls: bool,
}

struct App<S> {
    state: Arc<S>,
    shared: Arc<Shared>,
    handler: Handler<S>,
}

impl<S> Clone for App<S> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            shared: self.shared.clone(),
            handler: self.handler,
        }
    }
}

impl<S: Send + Sync + 'static> FakeServer<S> {
    /// Serves HTTP/1.1 and HTTP/2 (h2c prior knowledge) on 127.0.0.1 on a
    /// free port. `state` gets the address, for protocols whose messages
    /// name the server (a token endpoint's own URL).
    pub async fn start(state: impl FnOnce(SocketAddr) -> S, handler: Handler<S>) -> Self {
        let (listener, mut server, router) = Self::bind(state, handler, false).await;
        server.task = tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        server
    }

    /// Like [`Self::start`], behind TLS with a certificate for 127.0.0.1
    /// from the test CA (`tests/support/tls/ca.pem`), offering ALPN h2 and
    /// http/1.1 as real provider endpoints do.
    pub async fn start_tls(state: impl FnOnce(SocketAddr) -> S, handler: Handler<S>) -> Self {
        let (tcp, mut server, router) = Self::bind(state, handler, true).await;
        let listener = TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(server_tls_config())),
        };
        server.task = tokio::spawn(async move {
            let _ = axum::serve(listener, router.into_make_service()).await;
        });
        server
    }

    /// A loopback listener, the server's handle (its task not started yet)
    /// and the router that serves it.
    async fn bind(
        state: impl FnOnce(SocketAddr) -> S,
        handler: Handler<S>,
        tls: bool,
    ) -> (TcpListener, Self, Router) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let app = App {
            state: Arc::new(state(addr)),
            shared: Arc::new(Shared::default()),
            handler,
        };
        let server = Self {
            addr,
            state: app.state.clone(),
            shared: app.shared.clone(),
            task: tokio::spawn(async {}),
            tls,
        };
        let router = Router::new().fallback(serve::<S>).with_state(app);
        (listener, server, router)
    }

    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Requests whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with(prefix))
            .collect()
    }

    /// Queues answers for the next requests that pass the protocol checks.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared
            .script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(replies);
    }

    /// Holds every request this long before answering, so concurrent
    /// requests overlap.
    pub fn delay(&self, d: Duration) {
        self.shared
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }
}

impl<S> Drop for FakeServer<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<S: Send + Sync + 'static>(State(app): State<App<S>>, req: Request) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let shared = &app.shared;
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let rec = Recorded {
        method: parts.method,
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        version: parts.version,
        headers: parts.headers,
        body,
        peer,
    };
    // Recorded on arrival, before the delay: a real provider has taken a
    // request it received even if the client goes away before the answer
    // (what a sender crash in flight looks like from the provider's side).
    shared
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(rec.clone());
    let delay = shared.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let reply = (app.handler)(&rec, &app.state, shared);
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    let mut resp = Response::new(Body::from(reply.body));
    *resp.status_mut() = reply.status;
    for (name, value) in reply.headers {
        if let (Ok(n), Ok(v)) = (
            axum::http::HeaderName::try_from(name),
            HeaderValue::from_str(&value),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
    resp
}

/// The test CA that signed the TLS listener's certificate.
pub fn test_ca_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/tls/ca.pem")
}

fn server_tls_config() -> rustls::ServerConfig {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/tls");
    let certs = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .expect("server.pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("server.key");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("certificate and key match");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// Accepts TCP connections and completes the TLS handshake before handing
/// them to axum; a failed handshake (a client that distrusts the
/// certificate) just drops that connection.
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
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// A delivery with every content field set; tests override what they need.
pub fn delivery(channel: &str, target: &str) -> Delivery {
    Delivery {
        delivery_id: uuid::Uuid::now_v7().to_string(),
        notification_id: "n-1".into(),
        event_id: "e-1".into(),
        user_id: "u-1".into(),
        channel: channel.into(),
        target: target.into(),
        category: None,
        template_name: None,
        template_version: None,
        locale: None,
        title: Some("Your order shipped".into()),
        body: Some("It arrives on Tuesday.".into()),
        email_subject: Some("Order 1042 shipped".into()),
        email_html: Some("<p>It arrives on <b>Tuesday</b>.</p>".into()),
        email_text: Some("It arrives on Tuesday.".into()),
        data: BTreeMap::from([("order_id".to_string(), "1042".to_string())]),
        collapse_id: None,
        priority: Priority::Normal,
        expires_at: None,
        accepted_at: 0,
        attempt: 0,
        not_before: None,
        last_error: None,
        action_url: None,
        avatar_url: None,
    }
}

/// Splits a JWT and decodes its header and claims (no verification).
pub fn jwt_parts(jwt: &str) -> Option<(Value, Value, Vec<u8>, String)> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut it = jwt.split('.');
    let (h, c, s) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    let header = serde_json::from_slice(&b64.decode(h).ok()?).ok()?;
    let claims = serde_json::from_slice(&b64.decode(c).ok()?).ok()?;
    Some((header, claims, b64.decode(s).ok()?, format!("{h}.{c}")))
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// PEM-armours DER bytes.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<String> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}
