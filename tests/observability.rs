//! What operators look at queries metrics that exist: every metric name in
//! the Grafana dashboard's queries (`deploy/grafana/tidings.json`) and in the
//! Prometheus alert rules (`deploy/prometheus/alerts.yml`) is served by a
//! live gateway's `/metrics` once the pipeline has done the things those
//! panels and rules watch: a notification sent and delivered, a feed post
//! fanned out and read, and a request the enricher rejects for good (a
//! stage error and a dead letter). A renamed metric in
//! `crates/telemetry/src/lib.rs`, or a typo in a query, fails here rather
//! than as an empty panel or an alert that can never fire.
//!
//! Runs on the embedded default and on the real servers. The metrics
//! registry is one per process, so every wait below is for a series of this
//! test's own pipeline (its topics carry a unique prefix), not one another
//! test in the binary may have produced.

mod support;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use support::{Backend, TestPipeline, eventually, http::request};
use tidings::client::FeedClient;
use tidings_gateway::user_token::UserTokens;
use tidings_schemas::{
    AvroCodec,
    proto::v1 as pb,
    records::{NotificationRequest, Priority, TemplateRef},
};
use uuid::Uuid;

const DASHBOARD: &str = include_str!("../deploy/grafana/tidings.json");
const ALERTS: &str = include_str!("../deploy/prometheus/alerts.yml");

/// librdkafka reports consumer lag every 10 s (`statistics.interval.ms`),
/// and a stage reports it only for partitions it has been assigned.
const WAIT: Duration = Duration::from_secs(90);

/// The `tidings_*` metric names in `text`: identifiers starting `tidings_`
/// that are not part of a longer identifier. A histogram's series are named
/// as queried (`_bucket`, `_sum`, `_count`), and those are the names the
/// exposition lists, so no suffix is stripped.
fn metric_names(text: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("tidings_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
        if !before.is_some_and(is_ident) {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// Every PromQL expression of the dashboard (each panel target's `expr`).
fn dashboard_queries() -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(DASHBOARD).expect("deploy/grafana/tidings.json is JSON");
    let mut out = Vec::new();
    walk(&dashboard, &mut out);
    out
}

/// The metric names the dashboard and the alert rules use. The rules file
/// is read whole (its exprs, and the metrics its descriptions point to):
/// without a YAML parser among the dependencies, any `tidings_` name in it
/// must exist. scripts/deploy-check.sh checks its YAML structure.
fn queried_names() -> BTreeSet<String> {
    let queries = dashboard_queries();
    assert!(
        queries.len() >= 10,
        "the dashboard has {} queries; is deploy/grafana/tidings.json complete?",
        queries.len()
    );
    let mut names: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    names.extend(metric_names(ALERTS));
    names
}

/// The sample lines of the exposition, e.g.
/// `tidings_stage_outputs_total{stage="enricher",topic="t1.deliver.sms"} 3`.
fn samples(exposition: &str) -> impl Iterator<Item = &str> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
}

fn served_names(exposition: &str) -> BTreeSet<String> {
    samples(exposition)
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

async fn scrape(http: SocketAddr) -> String {
    let r = request(http, "GET", "/metrics", &[], None).await;
    assert_eq!(r.status, 200, "GET /metrics: {}", r.head);
    r.body
}

#[test]
fn names_are_found_where_they_are_used() {
    assert_eq!(
        metric_names(
            "sum by (le) (rate(tidings_feed_read_seconds_bucket[5m])) / x_tidings_other + tidings_a:b"
        ),
        ["tidings_a:b", "tidings_feed_read_seconds_bucket"]
            .map(String::from)
            .into()
    );
    let names = queried_names();
    for expected in [
        "tidings_provider_failing",
        "tidings_consumer_lag",
        "tidings_stage_outputs_total",
        "tidings_stage_batch_seconds_bucket",
        "tidings_feed_read_seconds_bucket",
    ] {
        assert!(names.contains(expected), "{expected} not in {names:?}");
    }
    assert!(
        served_names("# TYPE tidings_x counter\ntidings_x{a=\"b\"} 1\ntidings_y 2\n")
            == ["tidings_x", "tidings_y"].map(String::from).into()
    );
}

async fn every_queried_metric_is_served(backend: Backend) {
    let wanted = queried_names();
    let t = TestPipeline::start(backend).await;
    let http = t.pipeline.as_ref().expect("running").gateway.http;

    // A notification sent to a user with an email address and a phone
    // number, delivered by the default providers (the log sinks).
    let user = format!("u-{}", Uuid::new_v4());
    t.client
        .upsert_user(pb::UpsertUserRequest {
            user_id: user.clone(),
            display_name: "Ann".into(),
            email: format!("{user}@example.com"),
            phone: "+14155550100".into(),
            ..Default::default()
        })
        .await
        .expect("upsert user");
    let content = |body: &str| {
        Some(pb::send_request::Content::Raw(pb::RawContent {
            title: "Parcel".into(),
            body: body.into(),
            sms_text: body.into(),
            email_subject: "Parcel".into(),
            email_text: body.into(),
            ..Default::default()
        }))
    };
    let sent = t
        .client
        .send(pb::SendRequest {
            user_ids: vec![user.clone()],
            content: content("Your parcel has shipped"),
            ..Default::default()
        })
        .await
        .expect("send accepted");
    let notification_id = sent.notification_ids[0].clone();
    eventually(
        "the email, the SMS and the in-app item sent",
        WAIT,
        || async {
            let s = t.client.status(&notification_id).await.ok()?;
            (s.deliveries.iter().filter(|d| d.state == "sent").count() == 3).then_some(())
        },
    )
    .await;

    // A request the enricher rejects for good: its template does not exist.
    // The gateway refuses such a send, so it is written to the request
    // topic as a buggy or older producer would.
    let rejected = NotificationRequest {
        notification_id: Uuid::now_v7().to_string(),
        event_id: String::new(),
        app_key: t.app.0.clone(),
        user_id: user.clone(),
        channels: Vec::new(),
        category: None,
        template: Some(TemplateRef {
            name: format!("no-such-template-{}", Uuid::new_v4().simple()),
            version: None,
            params: Default::default(),
        }),
        content: None,
        send_at: None,
        expires_at: None,
        priority: Priority::Normal,
        collapse_id: None,
        data: Default::default(),
        accepted_at: 0,
    };
    let payload = AvroCodec::local().encode(&rejected).expect("encodes");
    t.produce_raw(&t.topic("notify.requests"), user.as_bytes(), &payload)
        .await;

    // A feed post, fanned out to the author's own feed, and a feed read.
    let token = UserTokens::new(&t.config.feed.user_token_secret).mint(
        &user,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs() as i64,
        Duration::from_secs(600),
    );
    let feed = FeedClient::connect(&t.grpc_endpoint(), &token)
        .await
        .expect("gateway answers");
    feed.publish("hello from the observability test", vec![])
        .await
        .expect("post published");
    eventually("the post in its author's feed", WAIT, || async {
        let page = feed.page("", 10).await.ok()?;
        (!page.items.is_empty()).then_some(())
    })
    .await;

    // Series only this pipeline can have produced (its topics are unique),
    // then every name the dashboard and the rules query.
    let dead_letters = format!("topic=\"{}\"", t.topic("deadletter"));
    let own_lag = format!("topic=\"{}.", t.prefix);
    let missing_now = Arc::new(Mutex::new(BTreeSet::new()));
    eventually(
        "every metric the dashboard and the alert rules query in /metrics (the names still missing are printed above)",
        WAIT,
        || {
            let wanted = &wanted;
            let (dead_letters, own_lag) = (&dead_letters, &own_lag);
            let missing_now = missing_now.clone();
            async move {
                let exposition = scrape(http).await;
                let ours = |name: &str, label: &str| {
                    samples(&exposition).any(|l| l.starts_with(name) && l.contains(label))
                };
                let mut missing: BTreeSet<String> = wanted
                    .difference(&served_names(&exposition))
                    .cloned()
                    .collect();
                if !ours("tidings_stage_outputs_total{", dead_letters) {
                    missing.insert(format!("tidings_stage_outputs_total{{{dead_letters}}}"));
                }
                if !ours("tidings_consumer_lag{", own_lag) {
                    missing.insert(format!("tidings_consumer_lag{{{own_lag}...}}"));
                }
                let mut last = missing_now.lock().unwrap_or_else(|p| p.into_inner());
                if *last != missing {
                    eprintln!("not in /metrics yet: {missing:?}");
                    *last = missing.clone();
                }
                missing.is_empty().then_some(())
            }
        },
    )
    .await;
    t.stop().await;
}

on_every_backend!(every_queried_metric_is_served);
