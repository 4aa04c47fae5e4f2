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
