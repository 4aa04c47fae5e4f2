//! The `tidings` binary fails with one clear line naming what is wrong and
//! where: no panic, no hang.

use std::process::{Command, Output};

fn tidings(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidings"));
    cmd.args(args)
        .current_dir(dir.path())
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("tidings runs")
}

fn error_line(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().last().unwrap_or_default().to_owned();
    assert!(line.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    line
}

#[test]
fn bad_configuration_names_the_key_and_its_source() {
    let line = error_line(&tidings(
        &["config"],
        &[("TIDINGS_KAFKA__PARTITIONS", "many")],
    ));
    assert!(
        line.to_lowercase().contains("kafka.partitions") && line.contains("TIDINGS_"),
        "{line}"
    );
    let line = error_line(&tidings(
        &["config"],
        &[("TIDINGS_STORE__URL", "mysql://db")],
    ));
    assert!(
        line.contains("store.url") && line.contains("mysql://db"),
        "{line}"
    );
    let line = error_line(&tidings(
        &["--config", "/does/not/exist.toml", "config"],
        &[],
    ));
    assert!(line.contains("/does/not/exist.toml"), "{line}");
}

#[test]
fn the_development_secrets_are_refused_on_a_shared_cluster() {
    let line = error_line(&tidings(
        &["config"],
        &[("TIDINGS_KAFKA__BOOTSTRAP_SERVERS", "k1:9092")],
    ));
    assert!(line.contains("tracking.link_secret"), "{line}");
    let line = error_line(&tidings(
        &["config"],
        &[
            ("TIDINGS_KAFKA__BOOTSTRAP_SERVERS", "k1:9092"),
            ("TIDINGS_TRACKING__LINK_SECRET", "s3cret"),
        ],
    ));
    assert!(line.contains("feed.user_token_secret"), "{line}");
}

#[test]
fn roles_refuse_the_in_process_broker() {
    let line = error_line(&tidings(&["gateway"], &[]));
    assert!(
        line.contains("kafka.bootstrap_servers") && line.contains("embedded"),
        "{line}"
    );
}

#[test]
fn unreachable_servers_are_named() {
    let env = [
        ("TIDINGS_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1"),
        ("TIDINGS_TRACKING__LINK_SECRET", "s3cret"),
        ("TIDINGS_FEED__USER_TOKEN_SECRET", "s3cret"),
    ];
    let line = error_line(&tidings(&["init"], &env));
    assert!(
        line.contains("Kafka at 127.0.0.1:1 did not answer"),
        "{line}"
    );
}

#[test]
fn unknown_stages_list_the_known_ones() {
    let env = [
        ("TIDINGS_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1"),
        ("TIDINGS_TRACKING__LINK_SECRET", "s3cret"),
        ("TIDINGS_FEED__USER_TOKEN_SECRET", "s3cret"),
    ];
    let out = tidings(&["process", "mailer"], &env);
    let line = error_line(&out);
    assert!(
        line.contains("unknown stage `mailer`") && line.contains("sender-email"),
        "{line}"
    );
}

#[test]
fn the_default_configuration_is_embedded_and_prints_as_toml() {
    let out = tidings(&["config"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("bootstrap_servers = \"embedded\""), "{text}");
    assert!(
        text.contains("url = \"sqlite://.tidings/tidings.db\""),
        "{text}"
    );
}

/// Runs `tidings` with `args` and returns stdout, failing with its stderr
/// unless it succeeds.
fn ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = tidings(args, env);
    assert!(
        out.status.success(),
        "tidings {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_of(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {text}"))
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish() {
    let bash = ok(&["completions", "bash"], &[]);
    assert!(
        bash.contains("_tidings()") && bash.contains("complete -F _tidings"),
        "{bash}"
    );
    for word in ["templates", "--output", "completions", "follow"] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    let zsh = ok(&["completions", "zsh"], &[]);
    assert!(zsh.starts_with("#compdef tidings"), "{zsh}");
    assert!(
        zsh.contains("--template") && zsh.contains("import"),
        "{zsh}"
    );
    let fish = ok(&["completions", "fish"], &[]);
    assert!(fish.contains("complete -c tidings"), "{fish}");
    assert!(
        fish.contains("Push title"),
        "fish shows the help texts: {fish}"
    );
    let out = tidings(&["completions", "tcsh"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("tcsh") && stderr.contains("bash"),
        "{stderr}"
    );
}

/// Every command's `-h`, walked from the top: each option and argument has
/// a line of help, and each subcommand a description.
#[test]
fn every_command_and_flag_has_help_text() {
    let mut missing = Vec::new();
    let mut todo = vec![Vec::<String>::new()];
    let mut seen = 0;
    while let Some(path) = todo.pop() {
        seen += 1;
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("-h");
        let help = ok(&args, &[]);
        let mut section = "";
        for line in help.lines() {
            if !line.starts_with(' ') {
                section = line.trim_end_matches(':');
                continue;
            }
            let entry = line.trim_start();
            // "NAME  help": two or more spaces, then words that are not
            // only clap's [default: ...] or [env: ...] notes.
            let text = entry
                .split_once("  ")
                .map(|(_, t)| t.trim())
                .unwrap_or_default();
            let described = !text.is_empty() && !text.starts_with('[');
            match section {
                "Commands" => {
                    let name = entry.split_whitespace().next().unwrap_or_default();
                    if !described {
                        missing.push(format!("tidings {} {name}", path.join(" ")));
                    }
                    if name != "help" {
                        let mut sub = path.clone();
                        sub.push(name.to_owned());
                        todo.push(sub);
                    }
                }
                "Options" | "Arguments" if !described => {
                    missing.push(format!("tidings {}: {entry}", path.join(" ")));
                }
                _ => {}
            }
        }
    }
    assert!(seen > 30, "walked only {seen} commands");
    assert!(missing.is_empty(), "without help text: {missing:#?}");
    // The flags issue 8 found bare.
    let send = ok(&["send", "-h"], &[]);
    for flag in ["--title", "--body", "--template", "--category"] {
        let line = send.lines().find(|l| l.contains(flag)).unwrap_or_default();
        assert!(
            line.split_once("  ")
                .is_some_and(|(_, t)| !t.trim().is_empty()),
            "{send}"
        );
    }
}

#[test]
fn output_json_is_machine_readable_without_a_gateway() {
    let config = json_of(&ok(&["config", "--output", "json"], &[]));
    assert_eq!(config["kafka"]["bootstrap_servers"], "embedded");

    // The admin commands talk to the store: a SQLite file of the test's own.
    let store = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/tidings.db", store.path().display());
    let env = [("TIDINGS_STORE__URL", url.as_str())];
    let created = json_of(&ok(
        &[
            "apps",
            "create",
            "billing",
            "--permissions",
            "send,status",
            "--output",
            "json",
        ],
        &env,
    ));
    let key = created["app_key"].as_str().expect("app_key").to_owned();
    assert!(
        !created["app_secret"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{created}"
    );
    let listed = json_of(&ok(&["apps", "list", "--output", "json"], &env));
    let app = listed
        .as_array()
        .and_then(|apps| apps.iter().find(|a| a["app_key"] == key.as_str()))
        .unwrap_or_else(|| panic!("{key} not in {listed}"));
    assert_eq!(app["name"], "billing");
    assert_eq!(app["permissions"], serde_json::json!(["send", "status"]));
    assert_eq!(app["revoked"], false);
    let revoked = json_of(&ok(&["apps", "revoke", &key, "--output", "json"], &env));
    assert_eq!(revoked["revoked"], true);
    let token = json_of(&ok(
        &["--output", "json", "user-token", "ada", "--ttl", "60"],
        &[],
    ));
    assert_eq!(token["user_id"], "ada");
    assert_eq!(
        token["token"].as_str().map(|t| t.split('.').count()),
        Some(3)
    );

    let dir = tempfile::tempdir().expect("temp dir");
    write_doc_examples(dir.path());
    let checked = json_of(&ok(
        &[
            "templates",
            "import",
            "--dry-run",
            "--output",
            "json",
            &dir.path().to_string_lossy(),
        ],
        &[],
    ));
    let names: Vec<&str> = checked["templates"]
        .as_array()
        .expect("templates")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["password-reset", "welcome"]);
    // A bad file fails the whole import, naming the file and the key.
    std::fs::write(
        dir.path().join("typo.toml"),
        "[variants.en]\nsms_txt = \"x\"\n",
    )
    .expect("write");
    let line = error_line(&tidings(
        &[
            "templates",
            "import",
            "--dry-run",
            &dir.path().to_string_lossy(),
        ],
        &[],
    ));
    assert!(
        line.contains("typo.toml") && line.contains("sms_txt"),
        "{line}"
    );
}

/// The template files docs/cli.md shows: the examples are what the tests
/// import, so the page cannot drift from the format.
fn doc_example(lang: &str) -> String {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cli.md"))
        .expect("docs/cli.md");
    let section = &page[page
        .find("## Template files")
        .expect("a template files section")..];
    let fence = format!("```{lang}\n");
    let start = section.find(&fence).expect("an example") + fence.len();
    let len = section[start..].find("```").expect("the example's end");
    section[start..start + len].to_owned()
}

fn write_doc_examples(dir: &std::path::Path) {
    std::fs::write(dir.join("welcome.toml"), doc_example("toml")).expect("write");
    std::fs::write(dir.join("password-reset.json"), doc_example("json")).expect("write");
}

/// A `tidings dev` of the test's own, on free ports; killed when dropped.
struct Dev {
    child: std::process::Child,
    grpc: String,
    _dir: tempfile::TempDir,
}

impl Dev {
    fn start() -> Self {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
        };
        let (grpc, http) = (free(), free());
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(["dev", "--no-demo"])
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .env("TIDINGS_GATEWAY__GRPC_ADDR", grpc.to_string())
            .env("TIDINGS_GATEWAY__HTTP_ADDR", http.to_string())
            .env("TIDINGS_TELEMETRY__LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tidings dev starts");
        // Ready once it says so: by then the `dev` app exists.
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.starts_with("tidings dev is running") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(std::time::Duration::from_secs(120))
            .expect("tidings dev says it is running");
        Self {
            child,
            grpc: format!("http://{grpc}"),
            _dir: dir,
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn templates_import_and_client_commands_print_json() {
    let dev = Dev::start();
    let env = [("TIDINGS_GATEWAY_URL", dev.grpc.as_str())];
    let dir = tempfile::tempdir().expect("temp dir");
    write_doc_examples(dir.path());
    let dir = dir.path().to_string_lossy().into_owned();

    let imported = json_of(&ok(
        &["templates", "import", &dir, "--output", "json"],
        &env,
    ));
    let versions: Vec<(&str, u64)> = imported["templates"]
        .as_array()
        .expect("templates")
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap_or(""),
                t["version"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(versions, [("password-reset", 1), ("welcome", 1)]);
    // Text output, and a second import makes the next versions.
    let text = ok(&["templates", "import", &dir], &env);
    assert!(text.contains("template welcome version 2"), "{text}");
    assert!(text.contains("imported 2 template(s)"), "{text}");

    let welcome = json_of(&ok(
        &["templates", "get", "welcome", "--output", "json"],
        &env,
    ));
    assert_eq!(welcome["version"], 2);
    assert_eq!(
        welcome["variants"]["fr"]["sms_text"],
        "Bienvenue, {{name}} !"
    );
    assert_eq!(welcome["params"], serde_json::json!(["name"]));
    // The TOML `get` prints is a template file `put` takes.
    let toml = ok(&["templates", "get", "welcome"], &env);
    let again = tempfile::tempdir().expect("temp dir");
    let file = again.path().join("welcome.toml");
    std::fs::write(&file, toml).expect("write");
    let put = json_of(&ok(
        &[
            "templates",
            "put",
            &file.to_string_lossy(),
            "--output",
            "json",
        ],
        &env,
    ));
    assert_eq!(
        (put["name"].as_str(), put["version"].as_u64()),
        (Some("welcome"), Some(3))
    );

    let user = json_of(&ok(
        &["user", "ada", "--phone", "+14155550142", "--output", "json"],
        &env,
    ));
    assert_eq!(user["saved"], true);
    let sent = json_of(&ok(
        &[
            "send",
            "--user",
            "ada",
            "--channel",
            "sms",
            "--template",
            "welcome",
            "--param",
            "name=Ada",
            "--output",
            "json",
        ],
        &env,
    ));
    let id = sent["notification_ids"][0]
        .as_str()
        .expect("a notification id")
        .to_owned();
    assert!(
        !sent["event_id"].as_str().unwrap_or_default().is_empty(),
        "{sent}"
    );
    // The log sink delivers it; status shows it as JSON (NotFound until the
    // enricher has recorded it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = tidings(&["status", &id, "--output", "json"], &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            assert!(stderr.contains("NotFound"), "{stderr}");
            assert!(
                std::time::Instant::now() < deadline,
                "never recorded: {stderr}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
            continue;
        }
        let status = json_of(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(status["notification_id"], id.as_str());
        let states: Vec<&str> = status["deliveries"]
            .as_array()
            .expect("deliveries")
            .iter()
            .filter_map(|d| d["state"].as_str())
            .collect();
        if states.contains(&"delivered") || states.contains(&"sent") {
            assert_eq!(status["deliveries"][0]["channel"], "sms", "{status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not delivered: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let stats = json_of(&ok(
        &["templates", "stats", "welcome", "--output", "json"],
        &env,
    ));
    assert_eq!(stats["name"], "welcome");
    assert!(stats["sent"].is_i64(), "{stats}");

    let follow = json_of(&ok(
        &["feed", "--as", "ada", "follow", "bob", "--output", "json"],
        &env,
    ));
    assert_eq!(
        follow,
        serde_json::json!({"user_id": "bob", "following": true})
    );
    let page = json_of(&ok(
        &["feed", "--as", "ada", "read", "--output", "json"],
        &env,
    ));
    assert!(page["items"].is_array(), "{page}");
}
