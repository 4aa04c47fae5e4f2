//! A Twilio-protocol SMS provider stand-in for the chaos suite: its answer
//! can be switched while the pipeline runs (healthy, 500s, 429 with
//! Retry-After, stalls, bad credentials), and it records every message it
//! takes by the load's sequence number, which the load puts in the text.
//!
//! A message counts as taken when the request arrives, not when it is
//! answered: a real provider sends what it received even if the caller dies
//! before the answer, so this is the count that shows duplicates to users.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Form, Router,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};

pub const ACCOUNT_SID: &str = "ACchaos";
pub const AUTH_TOKEN: &str = "chaos-token";
/// Requests at once per sender process: the sender's duplicate allowance
/// per crash is this.
pub const MAX_IN_FLIGHT: u64 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Healthy,
    /// 500 with a Twilio error body.
    ServerError,
    /// 429 with `Retry-After: <secs>`.
    RateLimited {
        retry_after_secs: u64,
    },
    /// Takes the message, but answers only after this long.
    Stall(Duration),
    /// 401 as for a wrong auth token.
    BadCredentials,
}

impl Mode {
    pub fn label(&self) -> String {
        match self {
            Mode::Healthy => "healthy".into(),
            Mode::ServerError => "500".into(),
            Mode::RateLimited { retry_after_secs } => format!("429 Retry-After {retry_after_secs}"),
            Mode::Stall(d) => format!("{} s stalls", d.as_secs()),
            Mode::BadCredentials => "401".into(),
        }
    }
}

struct Inner {
    mode: Mode,
    /// When each sequence number was taken (more than one: duplicates).
    taken: HashMap<u64, Vec<Instant>>,
    /// Messages taken whose text carries no sequence number of this run.
    others: u64,
    /// Answers given, by status.
    answers: HashMap<u16, u64>,
}

#[derive(Clone)]
pub struct ChaosProvider {
    inner: Arc<Mutex<Inner>>,
    /// The text prefix of this run's messages: `chaos <run> `.
    prefix: Arc<str>,
    pub addr: SocketAddr,
}

/// The text the load sends for sequence number `seq`.
pub fn text_of(run: &str, seq: u64) -> String {
    format!("chaos {run} {seq}")
}

impl ChaosProvider {
    pub async fn start(run: &str) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            mode: Mode::Healthy,
            taken: HashMap::new(),
            others: 0,
            answers: HashMap::new(),
        }));
        let mut provider = ChaosProvider {
            inner,
            prefix: format!("chaos {run} ").into(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let app = Router::new()
            .route("/2010-04-01/Accounts/{sid}/Messages.json", post(messages))
            .with_state(provider.clone());
        provider.addr = crate::support::serve_on_loopback(app).await;
        provider
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_mode(&self, mode: Mode) {
        self.lock().mode = mode;
    }

    /// How many times each sequence number in `range` was taken, with the
    /// first time.
    pub fn taken_in(&self, range: std::ops::Range<u64>) -> HashMap<u64, (usize, Instant)> {
        self.lock()
            .taken
            .iter()
            .filter(|(seq, _)| range.contains(seq))
            .filter_map(|(seq, times)| times.first().map(|t| (*seq, (times.len(), *t))))
            .collect()
    }

    pub fn others(&self) -> u64 {
        self.lock().others
    }

    pub fn answers(&self) -> HashMap<u16, u64> {
        self.lock().answers.clone()
    }

    /// The `[providers.sms]` table pointing at this stand-in.
    pub fn config_toml(&self) -> String {
        format!(
            "[providers.sms]\nkind = \"twilio\"\naccount_sid = \"{ACCOUNT_SID}\"\n\
             auth_token = \"{AUTH_TOKEN}\"\nfrom = \"+15005550006\"\n\
             base_url = \"http://{}\"\nlimits = {{ max_in_flight = {MAX_IN_FLIGHT} }}\n",
            self.addr
        )
    }
}

async fn messages(
    State(provider): State<ChaosProvider>,
    Path(_sid): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let body = form.get("Body").map(String::as_str).unwrap_or_default();
    let seq = body
        .strip_prefix(&*provider.prefix)
        .and_then(|s| s.parse::<u64>().ok());
    let mode = provider.lock().mode;
    let takes = matches!(mode, Mode::Healthy | Mode::Stall(_));
    let status: u16 = match mode {
        Mode::Healthy | Mode::Stall(_) => 201,
        Mode::ServerError => 500,
        Mode::RateLimited { .. } => 429,
        Mode::BadCredentials => 401,
    };
    {
        let mut inner = provider.lock();
        *inner.answers.entry(status).or_default() += 1;
        if takes {
            match seq {
                Some(seq) => inner.taken.entry(seq).or_default().push(Instant::now()),
                None => inner.others += 1,
            }
        }
    }
    // Some latency always, so a sender has requests in flight when it dies.
    let delay = match mode {
        Mode::Stall(d) => d,
        _ => Duration::from_millis(20),
    };
    tokio::time::sleep(delay).await;
    let error = |code: u32, message: &str| {
        axum::Json(serde_json::json!({"code": code, "message": message, "status": status}))
    };
    match mode {
        Mode::Healthy | Mode::Stall(_) => {
            let sid = format!("SM{}", uuid::Uuid::new_v4().simple());
            (
                StatusCode::CREATED,
                axum::Json(serde_json::json!({"sid": sid, "status": "queued"})),
            )
                .into_response()
        }
        Mode::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            error(20500, "internal error"),
        )
            .into_response(),
        Mode::RateLimited { retry_after_secs } => {
            let mut headers = HeaderMap::new();
            headers.insert("retry-after", HeaderValue::from(retry_after_secs));
            (
                StatusCode::TOO_MANY_REQUESTS,
                headers,
                error(20429, "too many requests"),
            )
                .into_response()
        }
        Mode::BadCredentials => {
            (StatusCode::UNAUTHORIZED, error(20003, "Authenticate")).into_response()
        }
    }
}
