//! A real SMTP server for the SMTP provider: aiosmtpd (an independent
//! implementation from PyPI, installed by `scripts/test-deps.sh`), run by
//! `smtp_server.py` on a free loopback port.

use std::{path::Path, process::Stdio, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

pub struct SmtpServer {
    pub port: u16,
    pub out: tempfile::TempDir,
    // Killed on drop; closing its stdin also makes the script exit.
    _child: Child,
}

impl SmtpServer {
    /// `args`: `--reject ADDR`, `--tempfail ADDR`, `--auth USER:PASS`,
    /// `--tls starttls|implicit` (with `tls/server.pem`, for 127.0.0.1 and
    /// signed by [`super::test_ca_path`]; `starttls` also makes STARTTLS
    /// required, and AUTH only over TLS).
    pub async fn start(args: &[&str]) -> Self {
        let out = tempfile::tempdir().expect("temp dir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_server.py");
        let python = std::env::var("TIDINGS_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(&python)
            .arg(&script)
            .arg(out.path())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python} {}: {e}", script.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        let read = tokio::time::timeout(
            Duration::from_secs(20),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await;
        let port = match read {
            Ok(Ok(_)) => line.trim().parse::<u16>().ok(),
            _ => None,
        };
        let Some(port) = port else {
            panic!(
                "the aiosmtpd test server did not start (printed {line:?}); \
                 is aiosmtpd installed? run scripts/test-deps.sh"
            );
        };
        Self {
            port,
            out,
            _child: child,
        }
    }

    /// Every message accepted so far: `{"mail_from", "rcpt_tos", "data",
    /// "tls", "auth"}`, `tls` the TLS version it came over (`"TLSv1.3"`) or
    /// null, `auth` the login it authenticated as or null.
    pub fn received(&self) -> Vec<Value> {
        let mut files: Vec<_> = std::fs::read_dir(self.out.path())
            .expect("read out dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| {
                serde_json::from_slice(&std::fs::read(p).expect("read message"))
                    .expect("message JSON")
            })
            .collect()
    }
}
