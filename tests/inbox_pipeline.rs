//! The in-app channel end to end through the public gRPC `Send`, on the
//! embedded default and on real Kafka and Cassandra: a templated send on
//! CHANNEL_IN_APP puts the rendered item (its own title, the push body, a
//! tracked action URL, an avatar) in the user's inbox and one NEW event on
//! `inbox.events`; a user who opted out of in_app gets nothing; a raw send's
//! action_url and avatar_url arrive as sent.

mod support;

use std::time::Duration;

use support::{Backend, TestPipeline, eventually};
use tidings_gateway::user_token::UserTokens;
use tidings_schemas::{
    proto::v1 as pb,
    records::{Delivery, InboxEvent, InboxEventKind},
};
use tidings_store::InboxItem;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// The user's item for `notification_id`, once it is in the store.
async fn item_of(t: &TestPipeline, user: &str, notification_id: &str) -> InboxItem {
    eventually("the item in the user's inbox", WAIT, || async {
        t.store()
            .inbox
            .get(user, notification_id)
            .await
            .ok()
            .flatten()
    })
    .await
}

async fn put_template(t: &TestPipeline) -> String {
    let name = format!("invoice-{}", Uuid::new_v4().simple());
    t.client
        .put_template(pb::Template {
            name: name.clone(),
            params: vec!["name".into(), "amount".into(), "id".into()],
            default_locale: "en".into(),
            variants: [(
                "en".to_owned(),
                pb::TemplateContent {
                    push_title: "Invoice".into(),
                    push_body: "{{name}}, you owe {{amount}}".into(),
                    in_app_title: "Invoice {{id}} is ready".into(),
                    in_app_action_url: "{{link.invoice}}".into(),
                    in_app_avatar_url: "https://cdn.example/avatars/{{id}}.png".into(),
                    tracking_links: [(
                        "invoice".to_owned(),
                        "https://app.example/invoices/7".to_owned(),
                    )]
                    .into(),
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        })
        .await
        .expect("put template");
    name
}

async fn a_templated_in_app_send_fills_the_inbox(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let template = put_template(&t).await;
    // No contact record at all: every user id has an inbox.
    let user = format!("u-{}", Uuid::new_v4());
    let accepted = t
        .client
        .send(pb::SendRequest {
            user_ids: vec![user.clone()],
            channels: vec![pb::Channel::InApp as i32],
            category: "billing".into(),
            content: Some(pb::send_request::Content::Template(pb::TemplateRef {
                name: template.clone(),
                version: 0,
                params: [
                    ("name".to_owned(), "Ada".to_owned()),
                    ("amount".to_owned(), "$3".to_owned()),
                    ("id".to_owned(), "7".to_owned()),
                ]
                .into(),
            })),
            data: [("invoice_id".to_owned(), "7".to_owned())].into(),
            ..Default::default()
        })
        .await
        .expect("send accepted");
    let notification_id = accepted.notification_ids[0].clone();

    let item = item_of(&t, &user, &notification_id).await;
    assert_eq!(item.title.as_deref(), Some("Invoice 7 is ready"));
    assert_eq!(
        item.body.as_deref(),
        Some("Ada, you owe $3"),
        "no in_app_body: the push body"
    );
    let action = item.action_url.clone().expect("an action URL");
    assert!(
        action.starts_with(&format!("{}/t/c/", t.config.tracking.public_url)),
        "the action link is tracked: {action}"
    );
    assert_eq!(
        item.avatar_url.as_deref(),
        Some("https://cdn.example/avatars/7.png")
    );
    assert_eq!(item.category.as_deref(), Some("billing"));
    assert_eq!(item.data.get("invoice_id").map(String::as_str), Some("7"));
    assert_eq!(item.read_at, None);

    // The gateways' live streams get one NEW event with the item.
    let (_, events) = t
        .read_until::<InboxEvent>(&t.topic("inbox.events"), WAIT, |e| {
            e.iter().any(|e| e.user_id == user)
        })
        .await;
    let event = events.iter().find(|e| e.user_id == user).unwrap();
    assert_eq!(event.kind, InboxEventKind::New);
    assert_eq!(event.notification_id.as_ref(), Some(&notification_id));
    assert_eq!(event.unread, 1);
    let carried = event.item.as_ref().expect("the item");
    assert_eq!(carried.title, item.title);
    assert_eq!(carried.action_url, item.action_url);

    // The sender says so through GetStatus, on in_app alone.
    let status = eventually("the in_app delivery sent", WAIT, || async {
        let s = t.client.status(&notification_id).await.ok()?;
        s.deliveries.iter().any(|d| d.state == "sent").then_some(s)
    })
    .await;
    assert!(
        status
            .deliveries
            .iter()
            .all(|d| d.channel == "in_app" && d.target == user),
        "{:?}",
        status.deliveries
    );

    // Handled to the end: exactly one event for this notification.
    t.caught_up("sender.in_app", &t.topic("deliver.in_app"))
        .await;
    let events = t.read_all::<InboxEvent>(&t.topic("inbox.events")).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.notification_id.as_ref() == Some(&notification_id))
            .count(),
        1,
        "{events:?}"
    );

    // The user reads it over HTTP: the gateway's READ tracking event names
    // the item's template, so the template's stats count the read.
    assert_eq!(item.template_name.as_deref(), Some(template.as_str()));
    let addr = t.pipeline.as_ref().expect("running").gateway.http;
    let bearer = format!(
        "Bearer {}",
        UserTokens::new(&t.config.feed.user_token_secret).mint(
            &user,
            tidings_store::now_millis() / 1000,
            Duration::from_secs(600),
        )
    );
    let read = support::http::request(
        addr,
        "POST",
        &format!("/v1/me/notifications/{notification_id}/read"),
        &[("Authorization", bearer.as_str())],
        Some(("application/json", "")),
    )
    .await;
    assert_eq!(read.status, 200, "{}", read.body);
    eventually("the read in the template's stats", WAIT, || async {
        let stats = t.template_stats(&template).await?;
        (stats.read == 1).then_some(())
    })
    .await;
    t.stop().await;
}

async fn an_opt_out_of_in_app_writes_nothing(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let user = format!("u-{}", Uuid::new_v4());
    t.client
        .set_preference(&user, pb::Channel::InApp, "", false)
        .await
        .expect("opt out of in_app");
    let accepted = t
        .client
        .send(pb::SendRequest {
            user_ids: vec![user.clone()],
            channels: vec![pb::Channel::InApp as i32],
            content: Some(pb::send_request::Content::Raw(pb::RawContent {
                title: "Unwanted".into(),
                body: "You opted out of this".into(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .await
        .expect("send accepted");
    let notification_id = accepted.notification_ids[0].clone();
    let status = eventually("the opt-out in the status", WAIT, || async {
        let s = t.client.status(&notification_id).await.ok()?;
        (!s.deliveries.is_empty()).then_some(s)
    })
    .await;
    assert_eq!(status.deliveries.len(), 1, "{:?}", status.deliveries);
    assert_eq!(
        (
            status.deliveries[0].channel.as_str(),
            status.deliveries[0].state.as_str()
        ),
        ("in_app", "suppressed")
    );
    // Read to the end once the enricher has handled the send: no delivery
    // for the user, so nothing for the sender to write.
    t.caught_up("enricher", &t.topic("notify.requests")).await;
    let deliveries = t.read_all::<Delivery>(&t.topic("deliver.in_app")).await;
    assert!(
        deliveries.iter().all(|d| d.user_id != user),
        "{deliveries:?}"
    );
    assert_eq!(
        t.store().inbox.get(&user, &notification_id).await.unwrap(),
        None
    );
    assert_eq!(t.store().inbox.counts(&user).await.unwrap().total, 0);
    t.stop().await;
}

async fn a_raw_sends_urls_arrive(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let user = format!("u-{}", Uuid::new_v4());
    // No channels named: every channel, in_app among them (the user has no
    // device, phone or address for the others).
    let accepted = t
        .client
        .send(pb::SendRequest {
            user_ids: vec![user.clone()],
            category: "social".into(),
            content: Some(pb::send_request::Content::Raw(pb::RawContent {
                title: "Grace followed you".into(),
                action_url: "https://app.example/users/grace".into(),
                avatar_url: "https://cdn.example/grace.png".into(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .await
        .expect("send accepted");
    let notification_id = accepted.notification_ids[0].clone();
    let item = item_of(&t, &user, &notification_id).await;
    assert_eq!(item.title.as_deref(), Some("Grace followed you"));
    assert_eq!(item.body, None);
    assert_eq!(
        item.action_url.as_deref(),
        Some("https://app.example/users/grace"),
        "raw URLs are not rewritten"
    );
    assert_eq!(
        item.avatar_url.as_deref(),
        Some("https://cdn.example/grace.png")
    );
    assert_eq!(item.category.as_deref(), Some("social"));

    // A URL that is not absolute http(s) is refused, naming the field.
    let err = t
        .client
        .send(pb::SendRequest {
            user_ids: vec![user.clone()],
            channels: vec![pb::Channel::InApp as i32],
            content: Some(pb::send_request::Content::Raw(pb::RawContent {
                title: "x".into(),
                action_url: "javascript:alert(1)".into(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("InvalidArgument") && err.contains("raw.action_url"),
        "{err}"
    );
    t.stop().await;
}

on_every_backend!(
    a_templated_in_app_send_fills_the_inbox,
    an_opt_out_of_in_app_writes_nothing,
    a_raw_sends_urls_arrive,
);
