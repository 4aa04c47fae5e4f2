//! The experiments, each counted on its own (A to F of issue 7).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig,
    producer::{FutureProducer, FutureRecord},
};
use tidings_schemas::{
    AvroCodec, Channel,
    proto::v1 as pb,
    records::{Delivery, NotificationRequest, Priority, TemplateRef},
};
use uuid::Uuid;

use crate::{
    harness::{Harness, Poison, STAGE_ROLES, Stats, say},
    provider::Mode,
};

/// Load before the first fault, and between faults: the stage is killed
/// with records in flight.
const MID_STREAM: Duration = Duration::from_secs(4);
/// How long a killed process stays down before it is started again.
const DOWN: Duration = Duration::from_secs(1);

/// A. `kill -9` each of `roles` `times` times mid-stream, restarting it.
pub async fn kill_stages(h: &mut Harness, roles: &[&str], times: usize) -> Stats {
    let mut exp = h.begin(
        "A",
        &format!("kill -9 {} x{times}, restarted", roles.join(", ")),
    );
    for role in roles {
        for n in 1..=times {
            tokio::time::sleep(MID_STREAM).await;
            h.kill9(role);
            if role.starts_with("sender") || *role == "others" {
                exp.sender_crashes += 1;
            }
            tokio::time::sleep(DOWN).await;
            h.restart(role);
            h.recovered(&mut exp, &format!("kill -9 {role} #{n}")).await;
        }
    }
    h.finish(exp).await
}

/// B. Two replicas of every stage; one of each killed for good mid-stream.
pub async fn replicas(h: &mut Harness) -> Stats {
    let mut exp = h.begin(
        "B",
        "2 replicas of every stage, one of each kill -9'd for good",
    );
    let extra: Vec<String> = STAGE_ROLES.iter().map(|(r, _)| format!("{r}#2")).collect();
    {
        let mut c = crate::load::lock(&h.cluster);
        for ((_, stages), role) in STAGE_ROLES.iter().zip(&extra) {
            let mut args = vec!["process"];
            args.extend_from_slice(stages);
            c.spawn(role, &args);
        }
    }
    // Both replicas work for a while (the groups rebalance onto both).
    tokio::time::sleep(Duration::from_secs(20)).await;
    for role in &extra {
        h.kill9(role);
    }
    exp.sender_crashes = 2; // sender-sms#2, and the email/push senders in others#2
    h.recovered(&mut exp, "one replica of each stage killed")
        .await;
    tokio::time::sleep(MID_STREAM).await;
    h.finish(exp).await
}

/// C. `kill -9` the gateway mid-stream, three times, restarting it.
pub async fn gateway_kills(h: &mut Harness) -> Stats {
    let mut exp = h.begin("C", "kill -9 the gateway x3, restarted");
    for n in 1..=3 {
        tokio::time::sleep(MID_STREAM).await;
        h.kill9("gateway");
        tokio::time::sleep(DOWN).await;
        h.restart("gateway");
        h.recovered(&mut exp, &format!("kill -9 gateway #{n}"))
            .await;
    }
    h.finish(exp).await
}

/// D. The provider answers 500s, then 429 with Retry-After, then stalls
/// 5 s, then 401, each for `phase`, healthy in between.
pub async fn provider_faults(h: &mut Harness, phase: Duration) -> Stats {
    let mut exp = h.begin(
        "D",
        &format!(
            "provider 500 / 429 Retry-After 2 / 5 s stalls / 401, {} s each",
            phase.as_secs()
        ),
    );
    for mode in [
        Mode::ServerError,
        Mode::RateLimited {
            retry_after_secs: 2,
        },
        Mode::Stall(Duration::from_secs(5)),
        Mode::BadCredentials,
    ] {
        tokio::time::sleep(MID_STREAM).await;
        h.provider.set_mode(mode);
        tokio::time::sleep(phase).await;
        h.provider.set_mode(Mode::Healthy);
        h.recovered(&mut exp, &format!("provider {}", mode.label()))
            .await;
    }
    let answers: BTreeMap<u16, u64> = h.provider.answers().into_iter().collect();
    exp.notes.push(format!(
        "provider answers so far (status: count): {answers:?}"
    ));
    h.finish(exp).await
}

/// E. Poison on every topic a stage reads: garbage bytes, a 900 KB
/// undecodable record, an unknown schema id; on the request topic a
/// notification whose template does not exist and one that renders past
/// the largest record; on the SMS topic a delivery with no text. The same
/// oversized notification also goes through the public API.
pub async fn poison(h: &mut Harness) -> Stats {
    let mut exp = h.begin("E", "poison records on every topic");
    tokio::time::sleep(MID_STREAM).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &h.bootstrap)
        .set("message.max.bytes", "2000000")
        .create()
        .expect("poison producer");
    let codec = AvroCodec::local();
    let user = format!("chaos-{}-u1", h.run);
    let template = format!("chaos-{}-repeat", h.run);
    let put = h
        .client
        .put_template(pb::Template {
            name: template.clone(),
            params: vec!["p".into()],
            default_locale: "en".into(),
            variants: [(
                "en".to_owned(),
                pb::TemplateContent {
                    push_title: "t".into(),
                    push_body: "{{p}}".into(),
                    sms_text: "{{p}}{{p}}{{p}}{{p}}".into(),
                    email_subject: "s".into(),
                    email_text: "{{p}}{{p}}{{p}}{{p}}".into(),
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        })
        .await;
    if let Err(e) = &put {
        exp.notes.push(format!("put_template failed: {e:#}"));
    }
    let big_param = "x".repeat(300_000);
    let request = |template: &str, param: &str| NotificationRequest {
        notification_id: Uuid::new_v4().to_string(),
        event_id: format!("chaos-poison-{}", Uuid::new_v4()),
        app_key: "chaos".into(),
        user_id: user.clone(),
        channels: vec!["sms".into()],
        category: None,
        template: Some(TemplateRef {
            name: template.into(),
            version: None,
            params: [("p".to_owned(), param.to_owned())].into(),
        }),
        content: None,
        send_at: None,
        expires_at: None,
        priority: Priority::Normal,
        collapse_id: None,
        data: Default::default(),
        accepted_at: tidings_kafka::now_millis(),
    };
    let no_text = Delivery {
        delivery_id: Uuid::new_v4().to_string(),
        notification_id: Uuid::new_v4().to_string(),
        event_id: format!("chaos-poison-{}", Uuid::new_v4()),
        user_id: user.clone(),
        channel: "sms".into(),
        target: "+15550000000".into(),
        category: None,
        template_name: None,
        template_version: None,
        locale: None,
        title: None,
        body: None,
        email_subject: None,
        email_html: None,
        email_text: None,
        data: Default::default(),
        collapse_id: None,
        priority: Priority::Normal,
        expires_at: None,
        accepted_at: tidings_kafka::now_millis(),
        attempt: 1,
        not_before: None,
        last_error: None,
        action_url: None,
        avatar_url: None,
    };
    let mut records: Vec<(String, String, Vec<u8>, Option<String>)> = Vec::new();
    let t = &h.topics;
    let mut consumed = vec![t.requests(), t.tracking(), t.posts(), t.fanout()];
    consumed.extend(Channel::ALL.map(|c| t.deliver(c)));
    consumed.extend((0..tidings_kafka::RETRY_TIERS).map(|i| t.retry(i)));
    let mut unknown_id = vec![0u8, 0x7f, 0xff, 0xff, 0xf0];
    unknown_id.extend_from_slice(b"chaos poison with an unknown schema id");
    for topic in &consumed {
        records.push((
            topic.to_string(),
            "garbage bytes".into(),
            b"\xffchaos poison: not Avro".to_vec(),
            None,
        ));
        records.push((
            topic.to_string(),
            "900 KB of garbage".into(),
            vec![0xab; 900_000],
            None,
        ));
        records.push((
            topic.to_string(),
            "unknown schema id".into(),
            unknown_id.clone(),
            None,
        ));
    }
    let missing = request(&format!("chaos-{}-no-such-template", h.run), "v");
    let oversized = request(&template, &big_param);
    for (what, r) in [
        ("template that does not exist", missing),
        ("renders past the largest record", oversized),
    ] {
        let id = r.notification_id.clone();
        let bytes = codec.encode(&r).expect("encode request");
        records.push((t.requests().to_owned(), what.into(), bytes, Some(id)));
    }
    let bytes = codec.encode(&no_text).expect("encode delivery");
    records.push((
        t.deliver(Channel::Sms).to_owned(),
        "delivery with no text".into(),
        bytes,
        Some(no_text.notification_id.clone()),
    ));
    for (topic, what, payload, notification_id) in records {
        let sent = producer
            .send(
                FutureRecord::to(&topic).key(&user).payload(&payload),
                Duration::from_secs(30),
            )
            .await;
        match sent {
            Ok(delivery) => exp.poison.push(Poison {
                topic,
                partition: delivery.partition,
                offset: delivery.offset,
                what,
                notification_id,
            }),
            Err((e, _)) => exp
                .notes
                .push(format!("could not produce poison `{what}` to {topic}: {e}")),
        }
    }
    // The reproduction through the API: OK then a crash loop
    // before the fix; INVALID_ARGUMENT (nothing accepted) after it.
    let answer = h
        .client
        .send(pb::SendRequest {
            event_id: format!("chaos-poison-{}", Uuid::new_v4()),
            user_ids: vec![user.clone()],
            channels: vec![pb::Channel::Sms as i32],
            content: Some(pb::send_request::Content::Template(pb::TemplateRef {
                name: template.clone(),
                version: 0,
                params: [("p".to_owned(), big_param.clone())].into(),
            })),
            ..Default::default()
        })
        .await;
    match answer {
        Ok(r) => {
            exp.notes.push(
                "Send of a 300,000-character param to a template repeating it 4x: accepted".into(),
            );
            for id in r.notification_ids {
                exp.poison.push(Poison {
                    topic: "(Send)".into(),
                    partition: -1,
                    offset: -1,
                    what: "oversized notification through the API".into(),
                    notification_id: Some(id),
                });
            }
        }
        Err(e) => exp.notes.push(format!(
            "Send of a 300,000-character param to a template repeating it 4x: refused, {e:#}"
        )),
    }
    say(&format!("  {} poison records in", exp.poison.len()));
    h.recovered(&mut exp, "poison on every topic").await;
    tokio::time::sleep(MID_STREAM).await;
    let stats = h.finish(exp).await;
    say(&format!(
        "  messages at the provider without a load sequence number (poison that got through): {}",
        h.provider.others()
    ));
    stats
}

fn servers(args: &[&str]) -> Result<(), String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/servers.sh");
    let out = std::process::Command::new(script)
        .args(args)
        .output()
        .map_err(|e| format!("{script}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "scripts/servers.sh {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// F1. Kafka stopped and started again (DESTRUCTIVE: the shared broker).
pub async fn kafka_restart(h: &mut Harness) -> Stats {
    let mut exp = h.begin("F1", "Kafka broker restart");
    tokio::time::sleep(MID_STREAM).await;
    let done = tokio::task::spawn_blocking(|| {
        servers(&["down", "kafka"]).and_then(|_| servers(&["up", "kafka"]))
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(e) = done {
        exp.notes.push(e);
    }
    h.recovered(&mut exp, "Kafka restarted").await;
    tokio::time::sleep(MID_STREAM).await;
    h.finish(exp).await
}

/// F2. Cassandra stopped for 30 s (DESTRUCTIVE: the shared server).
pub async fn cassandra_outage(h: &mut Harness) -> Stats {
    let mut exp = h.begin("F2", "Cassandra stopped for 30 s");
    tokio::time::sleep(MID_STREAM).await;
    let down = tokio::task::spawn_blocking(|| servers(&["down", "cassandra"]))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(e) = down {
        exp.notes.push(e);
    }
    // Sends are still accepted, so the gateway must stay ready (a load
    // balancer would otherwise take it out) and say it is degraded.
    let outage = Instant::now();
    let mut last = String::new();
    while outage.elapsed() < Duration::from_secs(25) {
        let r = crate::support::http::request(h.http, "GET", "/readyz", &[], None).await;
        last = format!("{} {}", r.head.lines().next().unwrap_or_default(), r.body);
        if r.head.starts_with("HTTP/1.1 200") && r.body.contains("degraded") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if last.contains("degraded") {
        exp.notes.push(format!(
            "gateway /readyz during the outage, after {:.1} s: {last}",
            outage.elapsed().as_secs_f64()
        ));
    } else {
        exp.failures.push(format!(
            "gateway /readyz did not say ready (degraded) during the store outage; last: {last}"
        ));
    }
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(outage.elapsed())).await;
    let up = tokio::task::spawn_blocking(|| servers(&["up", "cassandra"]))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(e) = up {
        exp.notes.push(e);
    }
    h.recovered(&mut exp, "Cassandra back").await;
    tokio::time::sleep(MID_STREAM).await;
    h.finish(exp).await
}
