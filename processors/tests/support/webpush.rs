//! A push service stand-in for the web push provider: `webpush_server.py`,
//! which decrypts every message with the subscriber's private key
//! (Python's `http_ece`) and verifies the VAPID JWT (`cryptography`),
//! independently of the sender. Both come from PyPI into the virtualenv
//! `scripts/test-deps.sh` makes (`webpush-venv` in the tools' cache).
//!
//! Shared with the workspace's end-to-end tests (`tests/webpush.rs`), so it
//! uses only std's processes (the root crate's Tokio has no `process`).

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tidings_schemas::web_push::WebSubscription;

pub struct PushService {
    pub port: u16,
    /// The subscriber's keys (base64url).
    pub p256dh: String,
    pub auth: String,
    out: tempfile::TempDir,
    child: Child,
}

impl Drop for PushService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The script, from this crate (processors) or the workspace root.
fn script() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    ["tests/support", "processors/tests/support"]
        .iter()
        .map(|d| dir.join(d).join("webpush_server.py"))
        .find(|p| p.exists())
        .expect("processors/tests/support/webpush_server.py")
}

/// The Python with http_ece and cryptography: `TIDINGS_WEBPUSH_PYTHON`, or
/// the virtualenv test-deps.sh caches.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TIDINGS_WEBPUSH_PYTHON") {
        return p.into();
    }
    let tools = std::env::var_os("TIDINGS_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("tidings-tools"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("tidings-tools"))
        })
        .expect("HOME, XDG_CACHE_HOME or TIDINGS_TOOLS_DIR is set");
    tools.join("webpush-venv").join("bin").join("python")
}

impl PushService {
    /// Starts the stand-in; it accepts only JWTs whose `k` is `vapid_public`.
    pub async fn start(vapid_public: &str) -> Self {
        let out = tempfile::tempdir().expect("temp dir");
        let script = script();
        let python = python();
        let mut child = Command::new(&python)
            .arg(&script)
            .arg(out.path())
            .args(["--vapid-public", vapid_public])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} {}: {e}; install it with scripts/test-deps.sh",
                    python.display(),
                    script.display()
                )
            });
        let stdout = child.stdout.take().expect("piped stdout");
        let first_line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            line
        });
        // The line comes, or the script dies and the read ends with nothing.
        let line = tokio::time::timeout(Duration::from_secs(30), first_line)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let hello: Option<Value> = serde_json::from_str(&line).ok();
        let Some(hello) = hello else {
            panic!(
                "the push service stand-in did not start (printed {line:?}); \
                 are http_ece and cryptography installed in {}? run scripts/test-deps.sh",
                python.display()
            );
        };
        let field = |k: &str| hello[k].as_str().expect("hello field").to_owned();
        Self {
            port: hello["port"].as_u64().expect("port") as u16,
            p256dh: field("p256dh"),
            auth: field("auth"),
            out,
            child,
        }
    }

    /// The device token of a subscription at `path` (`/push/...` answers
    /// 201, `/status/<code>/...` answers that code).
    pub fn token(&self, path: &str) -> String {
        WebSubscription::new(
            &format!("http://127.0.0.1:{}{path}", self.port),
            &self.p256dh,
            &self.auth,
            true,
        )
        .expect("stand-in subscription")
        .to_token()
    }

    /// Every push received so far, in order: `{"path", "headers",
    /// "plaintext" or "error", "claims"}`.
    pub fn received(&self) -> Vec<Value> {
        let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(self.out.path())
            .expect("read out dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|p| Some((p.file_stem()?.to_str()?.parse().ok()?, p)))
            .collect();
        files.sort();
        files
            .iter()
            .map(|(_, p)| {
                serde_json::from_slice(&std::fs::read(p).expect("read push")).expect("push JSON")
            })
            .collect()
    }
}
