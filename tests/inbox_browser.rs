//! The inbox widget in a real browser, on the embedded default and on real
//! Kafka and Cassandra: a test page on its own origin loads
//! `/v1/inbox/widget.js` from the gateway and mounts it with a user token, in
//! two headless Chromium instances (two devices of one user) driven by
//! Selenium (tests/support/inbox_browser.py; Debian's chromium and
//! chromium-driver and the browser-venv of scripts/test-deps.sh). A
//! notification sent through gRPC on CHANNEL_IN_APP shows on both badges
//! within 2 s; clicking it on one page follows its action URL and the other
//! shows it read within 2 s; "mark all read" and archive on one page reach
//! the other within 2 s. The gateway answers the page's origin, and only it
//! and only on the inbox paths, with CORS headers.

mod support;

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use axum::{Router, extract::State, http::header, response::Html, routing::get};
use serde_json::{Value, json};
use support::{Backend, TestPipeline, http::request, serve_on_loopback};
use tidings_schemas::proto::v1 as pb;
use uuid::Uuid;

/// The page's tiny avatar (a 1x1 GIF), so the widget's `<img>` loads.
const AVATAR: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// How long one step of the browser script may take before the test fails
/// (the script's own waits are 2 s for what a user sees; starting two
/// browsers and loading the pages takes longer).
const STEP: Duration = Duration::from_secs(60);

/// A title that would run script if the widget parsed it as HTML.
const HOSTILE_TITLE: &str = r#"Invoice <img src=x onerror="window.__injected=1"> & <b>paid</b>"#;

/// The test page: the widget as docs/inbox.md tells an app to embed it.
async fn page(State(html): State<Arc<OnceLock<String>>>) -> Html<String> {
    Html(html.get().cloned().unwrap_or_default())
}

fn page_html(gateway: &str, token: &str) -> String {
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>tidings inbox test</title><link rel="icon" href="data:,"></head>
<body>
<header style="display:flex;justify-content:flex-end"><div id="inbox"></div></header>
<script src="{gateway}/v1/inbox/widget.js"></script>
<script>
  TidingsInbox.mount(document.getElementById("inbox"), {{
    baseUrl: "{gateway}",
    token: "{token}",
  }});
</script>
</body></html>"#
    )
}

/// Serves the page, a landing page for the action URL and the avatar, on a
/// loopback port: an origin other than the gateway's.
async fn page_server() -> (SocketAddr, Arc<OnceLock<String>>) {
    let html = Arc::new(OnceLock::new());
    let app = Router::new()
        .route("/", get(page))
        .route(
            "/landing",
            get(|| async { Html("<p id=landed>landed</p>") }),
        )
        .route(
            "/avatar.gif",
            get(|| async { ([(header::CONTENT_TYPE, "image/gif")], AVATAR) }),
        )
        .with_state(html.clone());
    (serve_on_loopback(app).await, html)
}

/// The Python with selenium: `TIDINGS_BROWSER_PYTHON`, or the virtualenv
/// scripts/test-deps.sh caches.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TIDINGS_BROWSER_PYTHON") {
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
    tools.join("browser-venv").join("bin").join("python")
}

/// The browser script, spoken to a JSON line at a time.
struct Browsers {
    child: Child,
    /// `None` once closed, which tells the script to quit.
    stdin: Option<ChildStdin>,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Browsers {
    fn start(page: &str) -> Self {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/inbox_browser.py");
        let python = python();
        let mut command = Command::new(&python);
        command.arg(&script).args(["--page", page]);
        for (var, flag) in [
            ("TIDINGS_CHROMIUM", "--chromium"),
            ("TIDINGS_CHROMEDRIVER", "--chromedriver"),
        ] {
            if let Some(path) = std::env::var_os(var) {
                command.arg(flag).arg(path);
            }
        }
        // Its own process group: chromedriver and the browsers it starts
        // are in it, so the test can end them all (see `Drop`).
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} {}: {e}; install selenium, chromium and chromium-driver with scripts/test-deps.sh",
                    python.display(),
                    script.display()
                )
            });
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        // A thread, not a runtime worker: the pipeline runs on those.
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdin: Some(stdin),
            lines,
        }
    }

    /// The script's next event; it must be `expected`. Returns its fields.
    async fn expect(&mut self, expected: &str) -> Value {
        let line = tokio::time::timeout(STEP, self.lines.recv())
            .await
            .unwrap_or_else(|_| panic!("the browser script said nothing for {STEP:?} (waiting for {expected})"))
            .unwrap_or_else(|| panic!("the browser script ended before {expected}; is selenium installed in {}? run scripts/test-deps.sh", python().display()));
        let event: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(
            event["event"],
            expected,
            "the browser script: {}",
            serde_json::to_string_pretty(&event).unwrap_or(line)
        );
        event
    }

    fn tell(&mut self, message: Value) {
        let stdin = self.stdin.as_mut().expect("stdin open until drop");
        writeln!(stdin, "{message}").expect("the browser script reads");
        stdin.flush().expect("flush");
    }
}

impl Drop for Browsers {
    fn drop(&mut self) {
        // The script quits its browsers when it is done or its stdin closes:
        // give it the time to (killing it at once left chromedriver and
        // its browsers running after every run). Then end whatever of its
        // process group is left, also after a failed test.
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one in-app notification to `user` and returns its id.
async fn send(
    t: &TestPipeline,
    user: &str,
    title: &str,
    action_url: &str,
    avatar_url: &str,
) -> String {
    let response = t
        .client
        .send(pb::SendRequest {
            user_ids: vec![user.into()],
            channels: vec![pb::Channel::InApp as i32],
            content: Some(pb::send_request::Content::Raw(pb::RawContent {
                title: title.into(),
                body: "Open it to see what changed.".into(),
                action_url: action_url.into(),
                avatar_url: avatar_url.into(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .await
        .expect("send");
    let [id] = response.notification_ids.as_slice() else {
        panic!("one notification per user: {:?}", response.notification_ids);
    };
    id.clone()
}

/// A CORS preflight from `origin` for `method path`; returns the status and
/// `access-control-allow-origin`, if any.
async fn preflight(
    gateway: SocketAddr,
    origin: &str,
    method: &str,
    path: &str,
) -> (u16, Option<String>) {
    let answer = request(
        gateway,
        "OPTIONS",
        path,
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", method),
            ("Access-Control-Request-Headers", "authorization"),
        ],
        None,
    )
    .await;
    let allowed = answer.head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("access-control-allow-origin")
            .then(|| value.trim().to_owned())
    });
    (answer.status, allowed)
}

async fn widget_keeps_two_browsers_in_step(backend: Backend) {
    let (page_addr, html) = page_server().await;
    let origin = format!("http://{page_addr}");
    let t =
        TestPipeline::start_with(backend, |c| c.gateway.cors_origins = vec![origin.clone()]).await;
    let gateway = t.pipeline.as_ref().expect("running").gateway.http;
    let gateway_url = format!("http://{gateway}");

    // CORS: the page's origin on the inbox paths, nothing else.
    for path in [
        "/v1/me/notifications/count",
        "/v1/me/notifications/n1/read",
        "/v1/inbox/widget.js",
    ] {
        assert_eq!(
            preflight(gateway, &origin, "POST", path).await,
            (200, Some(origin.clone())),
            "{path}"
        );
        assert_eq!(
            preflight(gateway, "http://elsewhere.example", "POST", path)
                .await
                .1,
            None,
            "{path} from another origin"
        );
    }
    assert_eq!(
        preflight(gateway, &origin, "GET", "/v1/me/feed").await.1,
        None,
        "the feed"
    );
    let script = request(gateway, "GET", "/v1/inbox/widget.js", &[], None).await;
    assert_eq!(script.status, 200);
    let head = script.head.to_ascii_lowercase();
    assert!(
        head.contains("content-type: application/javascript"),
        "{head}"
    );
    assert!(
        head.contains("cache-control: public, max-age=300") && head.contains("etag: \""),
        "{head}"
    );

    let user = format!("u-{}", Uuid::new_v4());
    t.client
        .upsert_user(pb::UpsertUserRequest {
            user_id: user.clone(),
            display_name: "Inbox Browser".into(),
            ..Default::default()
        })
        .await
        .expect("upsert user");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let token = tidings_gateway::user_token::UserTokens::new(&t.config.feed.user_token_secret)
        .mint(&user, now, Duration::from_secs(3600));
    html.set(page_html(&gateway_url, &token)).expect("set once");

    let mut browsers = Browsers::start(&format!("{origin}/"));
    browsers.expect("ready").await;
    let (landing, avatar) = (format!("{origin}/landing"), format!("{origin}/avatar.gif"));
    let first = send(&t, &user, HOSTILE_TITLE, &landing, &avatar).await;
    browsers.tell(
        json!({"sent": [first], "title": HOSTILE_TITLE, "landing": landing, "avatar": avatar}),
    );
    let badge = browsers.expect("badge").await;
    let read = browsers.expect("read_elsewhere").await;
    browsers.expect("ready").await;
    let second = send(&t, &user, "Second", "", "").await;
    let third = send(&t, &user, "Third", "", "").await;
    browsers.tell(json!({"sent": [second, third]}));
    browsers.expect("badge").await;
    let read_all = browsers.expect("read_all_elsewhere").await;
    let archived = browsers.expect("archived_elsewhere").await;
    browsers.expect("done").await;
    eprintln!(
        "{backend:?}: badge after send {} ms, read elsewhere {} ms, read-all elsewhere {} ms, archive elsewhere {} ms",
        badge["ms"], read["ms"], read_all["ms"], archived["ms"]
    );

    // What the pages did is the user's state in the store.
    let auth = format!("Bearer {token}");
    let headers = [("Authorization", auth.as_str())];
    let counts = request(gateway, "GET", "/v1/me/notifications/count", &headers, None).await;
    assert_eq!(counts.status, 200, "{}", counts.body);
    assert_eq!(counts.json()["unread"], 0, "{}", counts.body);
    let archive = request(
        gateway,
        "GET",
        "/v1/me/notifications?filter=archived",
        &headers,
        None,
    )
    .await;
    let archive = archive.json();
    let ids: Vec<&str> = archive["items"]
        .as_array()
        .map(|items| items.iter().filter_map(|i| i["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, [second.as_str()], "{archive}");
    let inbox = request(
        gateway,
        "GET",
        "/v1/me/notifications?filter=all",
        &headers,
        None,
    )
    .await;
    let first_item = inbox.json()["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["id"] == first.as_str()).cloned())
        .unwrap_or_else(|| panic!("{first} listed: {}", inbox.body));
    assert_eq!(first_item["title"], HOSTILE_TITLE, "stored as sent");
    assert_eq!(first_item["read"], true);
    drop(browsers);
    t.stop().await;
}

on_every_backend!(widget_keeps_two_browsers_in_step);
