//! Conformance suite: every behaviour of the storage traits, written once
//! against `&Store` and run unchanged against each engine (the fixtures are
//! in `engines/mod.rs`, shared with the other store suites).

mod engines;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use tidings_store::{
    App, Device, FeedEntry, InboxAction, InboxCounts, InboxFilter, InboxItem, InboxQuery,
    MigrationState, Millis, NewAdmission, Platform, Post, Preference, PullState, Recipient,
    Revised, ScheduledItem, SchemaStatus, StatusEntry, Store, StoreError, StoreOptions,
    TemplateContent, TemplateVersion, UNSCOPED, User, now_millis, schema_status,
};
use uuid::Uuid;

on_both_engines! {
    migrations_are_idempotent,
    users_round_trip_and_contact_points_update_in_place,
    get_users_skips_missing_ids_and_keeps_order,
    device_tombstones_and_registrations_resolve_by_time,
    live_devices_many_spans_users_in_user_then_token_order,
    trimming_devices_keeps_live_and_recent_ones,
    recipients_answer_what_the_three_reads_answer,
    preferences_per_channel_and_category,
    template_versions_latest_and_conflicts,
    dedupe_sees_a_key_once_until_its_ttl_expires,
    dedupe_many_answers_per_position,
    dedupe_marks_without_answers,
    dedupe_claims_hold_a_key_for_its_first_claimant,
    dedupe_seen_many_answers_per_position_without_marking,
    notification_log_keeps_the_newest_status,
    notification_log_marks_a_send_for_good,
    posts_hydrate_and_page_by_author,
    restricted_posts_hydrate_but_are_never_listed_by_author,
    edits_change_the_body_everywhere_and_restricted_posts_stay_unlisted,
    deletes_remove_the_post_everywhere_once,
    followers_among_answers_only_followers,
    muted_among_answers_who_muted_the_user,
    followers_paginate_and_count_once,
    mutes_toggle,
    feed_reads_newest_first_with_a_cursor,
    feed_trim_keeps_the_newest,
    feed_remove_deletes_only_the_named_entries,
    pulled_authors_are_marked_and_unmarked,
    cooling_authors_are_pulled_until_their_time,
    counters_sum_and_default_to_zero,
    schedule_returns_due_items_oldest_first,
    schedule_scopes_are_separate,
    apps_put_revoke_and_list,
    rate_limit_admissions_of_many_keys_oldest_first,
    rate_limit_admissions_expire_with_their_ttl,
    rate_limit_readmission_is_idempotent,
    inbox_put_is_idempotent_and_keeps_the_state,
    inbox_cap_deletes_the_oldest,
    inbox_overlapping_puts_keep_exactly_the_newest,
    inbox_pages_reach_every_item_once_in_order,
    inbox_filters_by_state_and_category,
    inbox_marks_are_idempotent_and_refuse_unknown_items,
    inbox_mark_all_read_answers_how_many_changed,
    inbox_seen_mark_never_moves_back,
    inbox_items_expire_with_their_ttl,
}

fn id(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::now_v7())
}

// ---------------------------------------------------------------- tests

async fn migrations_are_idempotent(store: &Store) {
    // The fixture migrated already: nothing is left to apply.
    assert_eq!(
        store.migrate().await.expect("first re-run"),
        Vec::<u32>::new()
    );
    assert_eq!(
        store.migrate().await.expect("second re-run"),
        Vec::<u32>::new()
    );
    let status = store.schema_status().await.expect("status");
    assert!(status.pending().is_empty(), "{status}");
}

async fn users_round_trip_and_contact_points_update_in_place(store: &Store) {
    let alice = User {
        user_id: id("alice"),
        display_name: "Alice".into(),
        avatar_url: Some("https://cdn.example/a.png".into()),
        locale: Some("fr-FR".into()),
        email: None,
        phone: Some("+33612345678".into()),
        updated_at: 1_700_000_000_000,
    };
    let c = &store.contacts;
    c.upsert_user(&alice).await.unwrap();
    assert_eq!(
        c.get_user(&alice.user_id).await.unwrap(),
        Some(alice.clone())
    );

    c.set_email(&alice.user_id, Some("alice@example.com".into()))
        .await
        .unwrap();
    c.set_phone(&alice.user_id, None).await.unwrap();
    let updated = c.get_user(&alice.user_id).await.unwrap().expect("alice");
    assert_eq!(updated.email.as_deref(), Some("alice@example.com"));
    assert_eq!(updated.phone, None);
    assert_eq!(updated.display_name, "Alice", "profile kept");
    assert_eq!(updated.locale.as_deref(), Some("fr-FR"));
    assert!(updated.updated_at > alice.updated_at);

    // A contact point for an unknown user creates a bare user.
    let bob = id("bob");
    assert_eq!(c.get_user(&bob).await.unwrap(), None);
    c.set_phone(&bob, Some("+14155550100".into()))
        .await
        .unwrap();
    let bare = c.get_user(&bob).await.unwrap().expect("bob created");
    assert_eq!(bare.phone.as_deref(), Some("+14155550100"));
    assert_eq!(bare.display_name, "");
}

/// The one call the enricher makes per batch answers what the profile,
/// device and preference reads would: on CQL from the copy in each user's
/// `devices` partition, which every write keeps (profile, email and phone,
/// preference changes, device removals and invalidations).
async fn recipients_answer_what_the_three_reads_answer(store: &Store) {
    let run = Uuid::now_v7();
    let id = |name: &str| format!("{name}-{run}");
    let c = &store.contacts;
    let p = &store.preferences;
    let user = |name: &str, at: Millis| User {
        user_id: id(name),
        display_name: format!("{name} display"),
        avatar_url: Some(format!("https://img.example/{name}")),
        locale: Some("fr-FR".into()),
        email: Some(format!("{name}@example.com")),
        phone: None,
        updated_at: at,
    };
    let device = |name: &str, token: &str, platform: Platform, at: Millis| Device {
        user_id: id(name),
        token: token.into(),
        platform,
        registered_at: at,
        invalidated_at: None,
    };
    let choice = |name: &str, channel: &str, category: Option<&str>, opt_in: bool| Preference {
        user_id: id(name),
        channel: channel.into(),
        category: category.map(str::to_owned),
        opt_in,
        updated_at: if opt_in { 10 } else { 11 },
    };
    // Everything: a profile, a live and an invalidated device, choices.
    c.upsert_user(&user("full", 1)).await.expect("user");
    c.register_device(&device("full", "a-ios", Platform::Ios, 5))
        .await
        .expect("device");
    c.register_device(&device("full", "b-android", Platform::Android, 5))
        .await
        .expect("device");
    c.invalidate_device(&id("full"), "b-android", 6)
        .await
        .expect("invalidate");
    p.set(&choice("full", "sms", None, false))
        .await
        .expect("pref");
    p.set(&choice("full", "email", Some("digest"), true))
        .await
        .expect("pref");
    p.set(&choice("full", "email", Some("digest"), false))
        .await
        .expect("pref changed");
    // A bare row from contact points only, one of them cleared again.
    c.set_email(&id("bare"), Some("bare@example.com".into()))
        .await
        .expect("email");
    c.set_phone(&id("bare"), Some("+33612345678".into()))
        .await
        .expect("phone");
    c.set_email(&id("bare"), None).await.expect("email cleared");
    // Only a device; only a choice; a profile whose device was removed.
    c.register_device(&device("device-only", "t1", Platform::Web, 7))
        .await
        .expect("device");
    p.set(&choice("choice-only", "android", None, true))
        .await
        .expect("pref");
    c.upsert_user(&user("removed", 1)).await.expect("user");
    c.register_device(&device("removed", "gone", Platform::Ios, 5))
        .await
        .expect("device");
    c.remove_device(&id("removed"), "gone")
        .await
        .expect("remove");
    // Re-profiled: the newer profile replaces the older one whole.
    c.upsert_user(&user("reprofiled", 1)).await.expect("user");
    let newer = User {
        avatar_url: None,
        locale: None,
        ..user("reprofiled", 2)
    };
    c.upsert_user(&newer).await.expect("user again");

    let names = [
        "full",
        "bare",
        "device-only",
        "choice-only",
        "removed",
        "reprofiled",
        "unknown",
    ];
    let mut asked: Vec<String> = names.iter().map(|n| id(n)).collect();
    asked.push(id("full")); // asked twice, answered once
    let got = store
        .recipients
        .recipients_many(&asked)
        .await
        .expect("recipients");

    let users = c.get_users(&asked).await.expect("users");
    let devices = c.live_devices_many(&asked).await.expect("devices");
    let preferences = p.list_many(&asked).await.expect("preferences");
    let mut expected: HashMap<String, Recipient> = HashMap::new();
    for u in users {
        let user_id = u.user_id.clone();
        expected.entry(user_id).or_default().user = Some(u);
    }
    for d in devices {
        expected
            .entry(d.user_id.clone())
            .or_default()
            .devices
            .push(d);
    }
    for (user_id, list) in preferences {
        expected.entry(user_id).or_default().preferences = list;
    }
    assert_eq!(got, expected);

    // And what that is, so that the comparison cannot pass on two empty maps.
    assert_eq!(got.len(), 6, "every name but `unknown`: {got:?}");
    let full = &got[&id("full")];
    assert_eq!(full.user.as_ref().map(|u| u.updated_at), Some(1));
    assert_eq!(full.devices.len(), 1, "the invalidated device is not live");
    assert_eq!(full.devices[0].token, "a-ios");
    assert_eq!(
        full.preferences,
        vec![
            choice("full", "sms", None, false),
            choice("full", "email", Some("digest"), false),
        ],
        "channel-wide first, the newer choice kept"
    );
    let bare = got[&id("bare")]
        .user
        .as_ref()
        .expect("a bare row is a user");
    assert_eq!(
        (bare.email.as_deref(), bare.phone.as_deref()),
        (None, Some("+33612345678"))
    );
    assert!(got[&id("device-only")].user.is_none());
    assert!(got[&id("choice-only")].devices.is_empty());
    let removed = &got[&id("removed")];
    assert!(removed.user.is_some() && removed.devices.is_empty());
    assert_eq!(got[&id("reprofiled")].user.as_ref(), Some(&newer));
    assert!(
        store
            .recipients
            .recipients_many(&[])
            .await
            .expect("none")
            .is_empty()
    );
}

async fn get_users_skips_missing_ids_and_keeps_order(store: &Store) {
    let ids: Vec<String> = (0..5).map(|_| id("u")).collect();
    for (i, user_id) in ids.iter().enumerate() {
        let user = User {
            user_id: user_id.clone(),
            display_name: format!("user {i}"),
            avatar_url: None,
            locale: None,
            email: None,
            phone: None,
            updated_at: 1,
        };
        store.contacts.upsert_user(&user).await.unwrap();
    }
    let asked = vec![
        ids[3].clone(),
        id("missing"),
        ids[0].clone(),
        ids[4].clone(),
    ];
    let found: Vec<String> = store
        .contacts
        .get_users(&asked)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.user_id)
        .collect();
    assert_eq!(found, vec![ids[3].clone(), ids[0].clone(), ids[4].clone()]);
    assert!(store.contacts.get_users(&[]).await.unwrap().is_empty());
}

async fn device_tombstones_and_registrations_resolve_by_time(store: &Store) {
    let c = &store.contacts;
    let user = id("user");
    let device = |token: &str, platform, registered_at| Device {
        user_id: user.clone(),
        token: token.to_owned(),
        platform,
        registered_at,
        invalidated_at: None,
    };
    let live_tokens = || async {
        let devices = c.live_devices(&user).await.unwrap();
        let mut tokens: Vec<String> = devices.iter().map(|d| d.token.clone()).collect();
        tokens.sort();
        (tokens, devices)
    };

    c.register_device(&device("a-ios", Platform::Ios, 100))
        .await
        .unwrap();
    c.register_device(&device("b-android", Platform::Android, 100))
        .await
        .unwrap();
    let (tokens, devices) = live_tokens().await;
    assert_eq!(tokens, ["a-ios", "b-android"]);
    assert!(
        devices
            .iter()
            .any(|d| d.token == "b-android" && d.platform == Platform::Android)
    );

    // Invalidated after its registration: hidden.
    c.invalidate_device(&user, "a-ios", 200).await.unwrap();
    assert_eq!(live_tokens().await.0, ["b-android"]);

    // Re-registered after the invalidation: live again, tombstone kept.
    c.register_device(&device("a-ios", Platform::Ios, 300))
        .await
        .unwrap();
    let (tokens, devices) = live_tokens().await;
    assert_eq!(tokens, ["a-ios", "b-android"]);
    let a = devices.iter().find(|d| d.token == "a-ios").expect("a-ios");
    assert_eq!((a.registered_at, a.invalidated_at), (300, Some(200)));

    // A tombstone arriving before an older registration still wins.
    c.invalidate_device(&user, "c-web", 500).await.unwrap();
    c.register_device(&device("c-web", Platform::Web, 400))
        .await
        .unwrap();
    assert_eq!(live_tokens().await.0, ["a-ios", "b-android"]);
    c.register_device(&device("c-web", Platform::Web, 600))
        .await
        .unwrap();
    assert_eq!(live_tokens().await.0, ["a-ios", "b-android", "c-web"]);

    c.remove_device(&user, "b-android").await.unwrap();
    assert_eq!(live_tokens().await.0, ["a-ios", "c-web"]);
    assert!(c.live_devices(&id("nobody")).await.unwrap().is_empty());
}

async fn trimming_devices_keeps_live_and_recent_ones(store: &Store) {
    let c = &store.contacts;
    let user = id("many");
    let other = id("other");
    let register = |user: &str, token: &str, registered_at| Device {
        user_id: user.to_owned(),
        token: token.to_owned(),
        platform: Platform::Android,
        registered_at,
        invalidated_at: None,
    };
    for (i, token) in ["t1", "t2", "t3", "t4", "t5"].iter().enumerate() {
        c.register_device(&register(&user, token, 100 + i as i64))
            .await
            .unwrap();
    }
    c.register_device(&register(&other, "t1", 50))
        .await
        .unwrap();
    // t5, the newest, is invalidated; a tombstone for a token never
    // registered is recorded too.
    c.invalidate_device(&user, "t5", 500).await.unwrap();
    c.invalidate_device(&user, "ghost", 600).await.unwrap();
    // Under the cap: nothing removed.
    assert_eq!(c.trim_devices(&user, 10).await.unwrap(), 0);
    // To three: the two tombstones, then the oldest live device.
    assert_eq!(c.trim_devices(&user, 3).await.unwrap(), 3);
    let mut live: Vec<String> = c
        .live_devices(&user)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.token)
        .collect();
    live.sort();
    assert_eq!(live, ["t2", "t3", "t4"]);
    // The removed tombstone no longer hides a registration of t5.
    c.register_device(&register(&user, "t5", 200))
        .await
        .unwrap();
    assert_eq!(c.live_devices(&user).await.unwrap().len(), 4);
    assert_eq!(c.trim_devices(&user, 4).await.unwrap(), 0);
    // Another user's devices are not touched; an unknown user has none.
    assert_eq!(c.live_devices(&other).await.unwrap().len(), 1);
    assert_eq!(c.trim_devices(&id("nobody"), 1).await.unwrap(), 0);
    // The recipients read sees the trimmed rows.
    let recipients = store
        .recipients
        .recipients_many(std::slice::from_ref(&user))
        .await
        .unwrap();
    assert_eq!(recipients[&user].devices.len(), 4);
}

async fn live_devices_many_spans_users_in_user_then_token_order(store: &Store) {
    let c = &store.contacts;
    let device = |user: &str, token: &str, platform, registered_at| Device {
        user_id: user.to_owned(),
        token: token.to_owned(),
        platform,
        registered_at,
        invalidated_at: None,
    };
    // Two live devices, registered out of token order.
    let two = id("two");
    let two_b = device(&two, "b-android", Platform::Android, 100);
    let two_a = device(&two, "a-ios", Platform::Ios, 110);
    // One device invalidated after its registration, one re-registered after
    // its invalidation (live, tombstone kept), one late older registration.
    let churn = id("churn");
    let dead = device(&churn, "dead", Platform::Ios, 100);
    let back = device(&churn, "back", Platform::Web, 100);
    let late = device(&churn, "late", Platform::Android, 400);
    // Only tombstones.
    let gone = id("gone");
    // Never heard of.
    let unknown = id("unknown");

    for d in [&two_b, &two_a, &dead, &back] {
        c.register_device(d).await.unwrap();
    }
    c.invalidate_device(&churn, "dead", 200).await.unwrap();
    c.invalidate_device(&churn, "back", 200).await.unwrap();
    let back = Device {
        registered_at: 300,
        invalidated_at: Some(200),
        ..back
    };
    c.register_device(&back).await.unwrap();
    c.invalidate_device(&churn, "late", 500).await.unwrap();
    c.register_device(&late).await.unwrap();
    c.invalidate_device(&gone, "only-tombstone", 100)
        .await
        .unwrap();

    let mut expected = vec![two_a, two_b, back];
    expected.sort_by(|a, b| (&a.user_id, &a.token).cmp(&(&b.user_id, &b.token)));

    // Asked with repeats, unknown and device-less users, and with `two`
    // first although "two-" > "churn-": an answer in the order asked would
    // not pass for the sorted one.
    let asked = [
        unknown.clone(),
        two.clone(),
        gone.clone(),
        churn.clone(),
        two.clone(),
        churn.clone(),
    ];
    let many = c.live_devices_many(&asked).await.unwrap();
    assert_eq!(many, expected, "live devices, user then token, each once");

    // The same answer as one `live_devices` per user, in user order.
    let mut users = vec![two.clone(), churn.clone(), gone.clone(), unknown.clone()];
    users.sort();
    let mut one_by_one = Vec::new();
    for user in &users {
        one_by_one.extend(c.live_devices(user).await.unwrap());
    }
    assert_eq!(many, one_by_one);

    assert!(
        c.live_devices_many(&[gone, unknown])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(c.live_devices_many(&[]).await.unwrap().is_empty());
}

async fn preferences_per_channel_and_category(store: &Store) {
    let user = id("user");
    let pref = |channel: &str, category: Option<&str>, opt_in, updated_at| Preference {
        user_id: user.clone(),
        channel: channel.to_owned(),
        category: category.map(str::to_owned),
        opt_in,
        updated_at,
    };
    let p = &store.preferences;
    p.set(&pref("email", None, false, 1)).await.unwrap();
    p.set(&pref("push", Some("marketing"), false, 2))
        .await
        .unwrap();
    p.set(&pref("push", None, true, 3)).await.unwrap();
    p.set(&pref("email", None, true, 4)).await.unwrap(); // overwrites the first

    let mut listed = p.list(&user).await.unwrap();
    listed.sort_by(|a, b| (&a.channel, &a.category).cmp(&(&b.channel, &b.category)));
    assert_eq!(
        listed,
        vec![
            pref("email", None, true, 4),
            pref("push", None, true, 3),
            pref("push", Some("marketing"), false, 2),
        ]
    );

    let silent = id("silent");
    let many = p.list_many(&[user.clone(), silent.clone()]).await.unwrap();
    assert_eq!(many.get(&user).map(Vec::len), Some(3));
    assert!(!many.contains_key(&silent), "no explicit choice = absent");

    let err = p
        .set(&pref("sms", Some(""), true, 5))
        .await
        .expect_err("empty category");
    assert!(matches!(err, StoreError::InvalidData { .. }), "{err}");
    assert!(!err.is_retriable());
}

fn template(name: &str, version: u32, subject: &str) -> TemplateVersion {
    let content = TemplateContent {
        push_title: Some("New follower".into()),
        push_body: Some("{{name}} follows you".into()),
        email_subject: Some(subject.into()),
        tracking_links: BTreeMap::from([("profile".into(), "https://example.com/p/{{id}}".into())]),
        ..TemplateContent::default()
    };
    TemplateVersion {
        name: name.to_owned(),
        version,
        category: Some("social".into()),
        params: vec!["name".into(), "id".into()],
        default_locale: "en-US".into(),
        variants: BTreeMap::from([
            ("en-US".into(), content.clone()),
            ("fr-FR".into(), TemplateContent::default()),
        ]),
        created_at: 1_700_000_000_000 + i64::from(version),
    }
}

async fn template_versions_latest_and_conflicts(store: &Store) {
    let t = &store.templates;
    let name = id("new_follower");
    assert_eq!(t.get(&name, None).await.unwrap(), None);
    assert!(t.list_versions(&name).await.unwrap().is_empty());

    let v1 = template(&name, 1, "first");
    let v2 = TemplateVersion {
        params: Vec::new(),
        category: None,
        ..template(&name, 2, "second")
    };
    t.create_version(&v1).await.unwrap();
    t.create_version(&v2).await.unwrap();

    assert_eq!(
        t.get(&name, None).await.unwrap(),
        Some(v2.clone()),
        "None = latest"
    );
    assert_eq!(t.get(&name, Some(1)).await.unwrap(), Some(v1.clone()));
    assert_eq!(t.get(&name, Some(3)).await.unwrap(), None);
    assert_eq!(t.list_versions(&name).await.unwrap(), vec![1, 2]);

    let err = t
        .create_version(&template(&name, 1, "overwrite"))
        .await
        .expect_err("duplicate version");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert!(!err.is_retriable());
    assert_eq!(
        t.get(&name, Some(1)).await.unwrap(),
        Some(v1),
        "first write kept"
    );
}

async fn dedupe_sees_a_key_once_until_its_ttl_expires(store: &Store) {
    let d = &store.dedupe;
    let (scope, key) = (id("events"), id("evt"));
    let ttl = Duration::from_secs(1);
    assert!(!d.seen(&scope, &key).await.unwrap(), "seen does not mark");
    assert!(!d.seen(&scope, &key).await.unwrap());
    assert!(d.first_seen(&scope, &key, ttl).await.unwrap());
    assert!(d.seen(&scope, &key).await.unwrap());
    assert!(!d.first_seen(&scope, &key, ttl).await.unwrap());
    assert!(
        d.first_seen(&id("other-scope"), &key, ttl).await.unwrap(),
        "scopes are independent"
    );

    let long_lived = id("kept");
    assert!(
        d.first_seen(&scope, &long_lived, Duration::from_secs(600))
            .await
            .unwrap()
    );

    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !d.seen(&scope, &key).await.unwrap(),
        "expired keys are not seen"
    );
    assert!(
        d.first_seen(&scope, &key, ttl).await.unwrap(),
        "expired key is new again"
    );
    assert!(!d.first_seen(&scope, &key, ttl).await.unwrap());
    assert!(
        !d.first_seen(&scope, &long_lived, ttl).await.unwrap(),
        "longer TTL still holds"
    );

    d.forget(&scope, &long_lived).await.unwrap();
    assert!(
        d.first_seen(&scope, &long_lived, ttl).await.unwrap(),
        "forgotten key is new again"
    );
}

async fn dedupe_many_answers_per_position(store: &Store) {
    let d = &store.dedupe;
    let scope = id("sent");
    let ttl = Duration::from_secs(60);
    let (a, b, c) = (id("a"), id("b"), id("c"));
    assert!(d.first_seen(&scope, &c, ttl).await.unwrap());
    let answers = d
        .first_seen_many(&scope, &[a.clone(), b.clone(), a.clone(), c.clone()], ttl)
        .await
        .unwrap();
    assert_eq!(answers, vec![true, true, false, false]);
    assert_eq!(
        d.first_seen_many(&scope, &[b, id("d")], ttl).await.unwrap(),
        vec![false, true]
    );
    assert!(
        d.first_seen_many(&scope, &[], ttl)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn dedupe_marks_without_answers(store: &Store) {
    let d = &store.dedupe;
    let scope = id("sent");
    let ttl = Duration::from_secs(60);
    let (a, b, fresh) = (id("a"), id("b"), id("fresh"));
    assert!(d.first_seen(&scope, &a, ttl).await.unwrap());
    // A key marked before and a repeated one are no error.
    d.mark_many(&scope, &[a.clone(), b.clone(), b.clone()], ttl)
        .await
        .unwrap();
    d.mark_many(&scope, &[], ttl).await.unwrap();
    assert_eq!(
        d.seen_many(&scope, &[a.clone(), b.clone(), fresh.clone()])
            .await
            .unwrap(),
        vec![true, true, false]
    );
    assert!(!d.first_seen(&scope, &b, ttl).await.unwrap(), "marked");
    assert!(d.first_seen(&scope, &fresh, ttl).await.unwrap());
}

async fn dedupe_claims_hold_a_key_for_its_first_claimant(store: &Store) {
    use tidings_store::Claim::{First, Held, Taken};
    let d = &store.dedupe;
    let scope = id("events");
    let claim = |key: &str, claimant: &str| (key.to_owned(), claimant.to_owned());
    let (e1, e2, e3, brief) = (id("e1"), id("e2"), id("e3"), id("brief"));
    let ttl = Duration::from_secs(600);
    assert_eq!(
        d.claim_many(
            &scope,
            &[
                claim(&e1, "r1"),
                claim(&e2, "r2"),
                claim(&e1, "r1"),
                claim(&e1, "r3")
            ],
            ttl
        )
        .await
        .unwrap(),
        vec![First, First, Held, Taken]
    );
    assert_eq!(
        d.claim_many(
            &scope,
            &[claim(&e1, "r1"), claim(&e1, "r9"), claim(&e3, "r3")],
            ttl
        )
        .await
        .unwrap(),
        vec![Held, Taken, First]
    );
    assert!(d.claim_many(&scope, &[], ttl).await.unwrap().is_empty());
    assert!(d.seen(&scope, &e3).await.unwrap(), "a claim marks the key");
    // Marked without a claimant (as before claims existed): held, so the
    // record is processed again rather than lost.
    let old = id("old");
    assert!(d.first_seen(&scope, &old, ttl).await.unwrap());
    assert_eq!(
        d.claim_many(&scope, &[claim(&old, "r1")], ttl)
            .await
            .unwrap(),
        vec![Held]
    );
    // An expired claim frees the key for a new claimant.
    assert_eq!(
        d.claim_many(&scope, &[claim(&brief, "r1")], Duration::from_secs(1))
            .await
            .unwrap(),
        vec![First]
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        d.claim_many(&scope, &[claim(&brief, "r2")], ttl)
            .await
            .unwrap(),
        vec![First]
    );
}

async fn dedupe_seen_many_answers_per_position_without_marking(store: &Store) {
    let d = &store.dedupe;
    let scope = id("sent");
    let (kept, brief, never, elsewhere) = (id("kept"), id("brief"), id("never"), id("elsewhere"));
    assert!(
        d.first_seen(&scope, &kept, Duration::from_secs(600))
            .await
            .unwrap()
    );
    assert!(
        d.first_seen(&scope, &brief, Duration::from_secs(2))
            .await
            .unwrap()
    );
    assert!(
        d.first_seen(&id("other-scope"), &elsewhere, Duration::from_secs(600))
            .await
            .unwrap()
    );

    let asked = [
        kept.clone(),
        never.clone(),
        brief.clone(),
        kept.clone(),
        elsewhere.clone(),
        never.clone(),
    ];
    assert_eq!(
        d.seen_many(&scope, &asked).await.unwrap(),
        vec![true, false, true, true, false, false]
    );
    assert!(
        d.first_seen(&scope, &never, Duration::from_secs(600))
            .await
            .unwrap(),
        "seen_many does not mark"
    );
    assert!(d.seen_many(&scope, &[]).await.unwrap().is_empty());

    // CQL TTLs count whole seconds from the second of the write, so a 2 s
    // key lives between 1 and 2 s there.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(
        d.seen_many(
            &scope,
            &[brief.clone(), kept.clone(), brief.clone(), never.clone()]
        )
        .await
        .unwrap(),
        vec![false, true, false, true],
        "expired keys are not seen"
    );

    d.forget(&scope, &kept).await.unwrap();
    assert_eq!(
        d.seen_many(&scope, &[kept, never]).await.unwrap(),
        vec![false, true],
        "forgotten keys are not seen"
    );
}

async fn notification_log_keeps_the_newest_status(store: &Store) {
    let log = &store.notification_log;
    let notification_id = id("n");
    let entry = |channel: &str, target: &str, state: &str, attempt, at| StatusEntry {
        notification_id: notification_id.clone(),
        user_id: "u1".into(),
        channel: channel.to_owned(),
        target: target.to_owned(),
        state: state.to_owned(),
        detail: (state == "failed").then(|| "provider said no".to_owned()),
        attempt,
        at,
    };
    log.record(&entry("ios", "tok-1", "queued", 0, 1_000))
        .await
        .unwrap();
    log.record(&entry("ios", "tok-1", "delivered", 1, 3_000))
        .await
        .unwrap();
    // Late arrival of an older status does not regress the state.
    log.record(&entry("ios", "tok-1", "sent", 1, 2_000))
        .await
        .unwrap();
    log.record_many(&[
        entry("email", "a@example.com", "failed", 3, 2_500),
        entry("sms", "+33612345678", "sent", 1, 2_600),
        entry("", "", "accepted", 0, 900),
    ])
    .await
    .unwrap();

    let got = log.get(&notification_id).await.unwrap();
    assert_eq!(
        got,
        vec![
            entry("", "", "accepted", 0, 900),
            entry("email", "a@example.com", "failed", 3, 2_500),
            entry("ios", "tok-1", "delivered", 1, 3_000),
            entry("sms", "+33612345678", "sent", 1, 2_600),
        ]
    );
    assert!(log.get(&id("unknown")).await.unwrap().is_empty());
}

/// The senders' sent-ledger: a `sent` entry marks its row for good, whatever
/// comes later or arrived earlier.
async fn notification_log_marks_a_send_for_good(store: &Store) {
    let log = &store.notification_log;
    let notification_id = id("n");
    let entry = |target: &str, state: &str, at| StatusEntry {
        notification_id: notification_id.clone(),
        user_id: "u1".into(),
        channel: "android".into(),
        target: target.to_owned(),
        state: state.to_owned(),
        detail: None,
        attempt: 0,
        at,
    };
    let key = |target: &str| entry(target, "", 0).key();
    log.record_many(&[
        // Sent, then a newer state replaces it.
        entry("t-later", "sent", 1_000),
        entry("t-later", "opened", 2_000),
        // The sent entry arrives after a newer one: the row keeps the
        // newer state and is marked all the same.
        entry("t-late", "delivered", 2_000),
        entry("t-late", "sent", 1_000),
        // Never sent.
        entry("t-retrying", "retrying", 1_000),
        entry("t-retrying", "dead_lettered", 2_000),
    ])
    .await
    .unwrap();
    log.record(&entry("t-one", "sent", 1_500)).await.unwrap();
    let keys = [
        key("t-later"),
        key("t-late"),
        key("t-retrying"),
        key("t-one"),
        key("t-unknown"),
        key("t-later"),
    ];
    assert_eq!(
        log.sent_many(&keys).await.unwrap(),
        [true, true, false, true, false, true]
    );
    let states: Vec<(String, String)> = log
        .get(&notification_id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.target, e.state))
        .collect();
    assert!(
        states.contains(&("t-late".into(), "delivered".into())),
        "{states:?}"
    );
    assert!(
        states.contains(&("t-later".into(), "opened".into())),
        "{states:?}"
    );
    assert!(log.sent_many(&[]).await.unwrap().is_empty());
}

async fn posts_hydrate_and_page_by_author(store: &Store) {
    let p = &store.posts;
    let author = id("author");
    let base: Millis = 1_700_000_000_000;
    let mut posts = Vec::new();
    for i in 0..5 {
        let post = Post {
            post_id: Uuid::now_v7().to_string(),
            author_id: author.clone(),
            body: format!("post {i}"),
            media_urls: if i % 2 == 0 {
                vec![format!("https://cdn.example/{i}.jpg")]
            } else {
                Vec::new()
            },
            created_at: base + i,
        };
        p.put(&post).await.unwrap();
        posts.push(post);
    }
    let other = Post {
        post_id: Uuid::now_v7().to_string(),
        author_id: id("other"),
        body: String::new(),
        media_urls: Vec::new(),
        created_at: base + 2,
    };
    p.put(&other).await.unwrap();

    let asked = vec![
        posts[3].post_id.clone(),
        id("missing"),
        posts[0].post_id.clone(),
        other.post_id.clone(),
    ];
    assert_eq!(
        p.get_many(&asked).await.unwrap(),
        vec![posts[3].clone(), posts[0].clone(), other]
    );

    let newest = p.by_author(&author, None, 3).await.unwrap();
    assert_eq!(
        newest,
        vec![posts[4].clone(), posts[3].clone(), posts[2].clone()]
    );
    let older = p
        .by_author(&author, Some(posts[2].created_at), 10)
        .await
        .unwrap();
    assert_eq!(
        older,
        vec![posts[1].clone(), posts[0].clone()],
        "strictly before the cursor"
    );
}

async fn restricted_posts_hydrate_but_are_never_listed_by_author(store: &Store) {
    let p = &store.posts;
    let author = id("author");
    let post = |i: i64| Post {
        post_id: Uuid::now_v7().to_string(),
        author_id: author.clone(),
        body: format!("post {i}"),
        media_urls: Vec::new(),
        created_at: 1_700_000_000_000 + i,
    };
    let (public, restricted) = (post(1), post(2));
    p.put(&public).await.unwrap();
    p.put_restricted(&restricted).await.unwrap();
    p.put_restricted(&restricted).await.unwrap(); // idempotent
    assert_eq!(
        p.get_many(&[restricted.post_id.clone(), public.post_id.clone()])
            .await
            .unwrap(),
        vec![restricted.clone(), public.clone()]
    );
    assert_eq!(p.by_author(&author, None, 10).await.unwrap(), vec![public]);
}

async fn edits_change_the_body_everywhere_and_restricted_posts_stay_unlisted(store: &Store) {
    let p = &store.posts;
    let author = id("author");
    let post = |i: i64| Post {
        post_id: Uuid::now_v7().to_string(),
        author_id: author.clone(),
        body: format!("post {i}"),
        media_urls: vec![format!("https://cdn.example/{i}.jpg")],
        created_at: 1_700_000_000_000 + i,
    };
    let (public, restricted) = (post(1), post(2));
    p.put(&public).await.unwrap();
    p.put_restricted(&restricted).await.unwrap();

    assert_eq!(p.edit(&public, "edited").await.unwrap(), Revised::Applied);
    assert_eq!(
        p.edit(&restricted, "edited too").await.unwrap(),
        Revised::Applied
    );
    let edited = Post {
        body: "edited".into(),
        ..public.clone()
    };
    let restricted_edited = Post {
        body: "edited too".into(),
        ..restricted.clone()
    };
    assert_eq!(
        p.get_many(&[public.post_id.clone(), restricted.post_id.clone()])
            .await
            .unwrap(),
        vec![edited.clone(), restricted_edited],
        "the new bodies, media and times unchanged"
    );
    assert_eq!(
        p.by_author(&author, None, 10).await.unwrap(),
        vec![edited],
        "the by-author copy is edited, and the restricted post gained none"
    );

    let never = post(3);
    assert_eq!(p.edit(&never, "ghost").await.unwrap(), Revised::Missing);
    assert_eq!(
        p.get_many(std::slice::from_ref(&never.post_id))
            .await
            .unwrap(),
        vec![]
    );
    assert_eq!(p.by_author(&author, None, 10).await.unwrap().len(), 1);
}

async fn deletes_remove_the_post_everywhere_once(store: &Store) {
    let p = &store.posts;
    let author = id("author");
    let post = |i: i64| Post {
        post_id: Uuid::now_v7().to_string(),
        author_id: author.clone(),
        body: format!("post {i}"),
        media_urls: Vec::new(),
        created_at: 1_700_000_000_000 + i,
    };
    let (kept, public, restricted) = (post(1), post(2), post(3));
    p.put(&kept).await.unwrap();
    p.put(&public).await.unwrap();
    p.put_restricted(&restricted).await.unwrap();

    assert_eq!(p.delete(&public).await.unwrap(), Revised::Applied);
    assert_eq!(p.delete(&restricted).await.unwrap(), Revised::Applied);
    assert_eq!(p.delete(&public).await.unwrap(), Revised::Missing, "once");
    assert_eq!(
        p.get_many(&[
            public.post_id.clone(),
            kept.post_id.clone(),
            restricted.post_id.clone()
        ])
        .await
        .unwrap(),
        vec![kept.clone()]
    );
    assert_eq!(p.by_author(&author, None, 10).await.unwrap(), vec![kept]);
    // An edit after the delete brings nothing back.
    assert_eq!(p.edit(&public, "back?").await.unwrap(), Revised::Missing);
    assert_eq!(
        p.get_many(std::slice::from_ref(&public.post_id))
            .await
            .unwrap(),
        vec![]
    );
    assert_eq!(p.by_author(&author, None, 10).await.unwrap().len(), 1);
}

async fn followers_among_answers_only_followers(store: &Store) {
    let g = &store.social_graph;
    let (author, fan, stranger, gone) = (id("author"), id("fan"), id("stranger"), id("gone"));
    g.follow(&fan, &author, 1).await.unwrap();
    g.follow(&gone, &author, 1).await.unwrap();
    g.unfollow(&gone, &author).await.unwrap();
    // The reverse edge does not count.
    g.follow(&author, &stranger, 1).await.unwrap();
    let among = g
        .followers_among(
            &author,
            &[fan.clone(), stranger.clone(), gone.clone(), fan.clone()],
        )
        .await
        .unwrap();
    assert_eq!(among, HashSet::from([fan]));
    assert!(g.followers_among(&author, &[]).await.unwrap().is_empty());
}

async fn muted_among_answers_who_muted_the_user(store: &Store) {
    let g = &store.social_graph;
    let (author, muter, fan, unmuted) = (id("author"), id("muter"), id("fan"), id("unmuted"));
    g.set_muted(&muter, &author, true).await.unwrap();
    g.set_muted(&unmuted, &author, true).await.unwrap();
    g.set_muted(&unmuted, &author, false).await.unwrap();
    // The author muting someone is the other direction.
    g.set_muted(&author, &fan, true).await.unwrap();
    let among = g
        .muted_among(&author, &[fan.clone(), muter.clone(), unmuted])
        .await
        .unwrap();
    assert_eq!(among, HashSet::from([muter]));
    assert!(g.muted_among(&author, &[]).await.unwrap().is_empty());
}

async fn followers_paginate_and_count_once(store: &Store) {
    let g = &store.social_graph;
    let star = id("star");
    let mut fans: Vec<String> = (0..25).map(|i| format!("{}-{i:02}", id("fan"))).collect();
    for fan in &fans {
        g.follow(fan, &star, 1).await.unwrap();
    }
    g.follow(&fans[0], &star, 2).await.unwrap(); // again: no double count
    fans.sort();
    assert_eq!(g.follower_count(&star).await.unwrap(), 25);

    let mut paged = Vec::new();
    let mut cursor = None;
    loop {
        let page = g.followers(&star, cursor.clone(), 10).await.unwrap();
        assert!(page.len() <= 10);
        if page.is_empty() {
            break;
        }
        cursor = page.last().cloned();
        paged.extend(page);
    }
    assert_eq!(paged, fans, "pages are disjoint, ordered and complete");

    g.unfollow(&fans[7], &star).await.unwrap();
    g.unfollow(&fans[7], &star).await.unwrap(); // again: no double decrement
    assert_eq!(g.follower_count(&star).await.unwrap(), 24);
    assert!(
        !g.followers(&star, None, 100)
            .await
            .unwrap()
            .contains(&fans[7])
    );

    // Friends = edges both ways.
    g.follow(&star, &fans[0], 3).await.unwrap();
    g.follow(&star, &fans[1], 3).await.unwrap();
    assert_eq!(
        g.following(&star).await.unwrap(),
        vec![fans[0].clone(), fans[1].clone()]
    );
    assert_eq!(g.following(&fans[2]).await.unwrap(), vec![star.clone()]);
    assert_eq!(g.follower_count(&id("nobody")).await.unwrap(), 0);
}

async fn mutes_toggle(store: &Store) {
    let g = &store.social_graph;
    let user = id("user");
    let (loud, spammy) = (id("loud"), id("spammy"));
    g.set_muted(&user, &loud, true).await.unwrap();
    g.set_muted(&user, &spammy, true).await.unwrap();
    g.set_muted(&user, &spammy, true).await.unwrap();
    assert_eq!(
        g.muted(&user).await.unwrap(),
        HashSet::from([loud.clone(), spammy.clone()])
    );
    g.set_muted(&user, &spammy, false).await.unwrap();
    assert_eq!(g.muted(&user).await.unwrap(), HashSet::from([loud]));
    assert!(
        g.muted(&spammy).await.unwrap().is_empty(),
        "mutes are directed"
    );
}

fn feed_entries(owner: &str, n: usize) -> Vec<(String, FeedEntry)> {
    // Pairs of entries share a timestamp, so post ids must break the ties.
    (0..n)
        .map(|i| {
            let entry = FeedEntry {
                post_id: format!("p{i:03}"),
                author_id: format!("author{}", i % 3),
                created_at: 1_700_000_000_000 + (i / 2) as Millis,
            };
            (owner.to_owned(), entry)
        })
        .collect()
}

async fn feed_reads_newest_first_with_a_cursor(store: &Store) {
    let f = &store.feed;
    let (owner, other) = (id("reader"), id("other"));
    let mut entries = feed_entries(&owner, 9);
    entries.extend(feed_entries(&other, 3));
    f.append_many(&entries).await.unwrap();
    f.append_many(&entries[..2]).await.unwrap(); // idempotent

    let mut expected: Vec<FeedEntry> = entries
        .iter()
        .filter(|(o, _)| *o == owner)
        .map(|(_, e)| e.clone())
        .collect();
    expected.sort_by(|a, b| (b.created_at, &b.post_id).cmp(&(a.created_at, &a.post_id)));

    let mut read = Vec::new();
    let mut cursor = None;
    loop {
        let page = f.read(&owner, cursor.clone(), 4).await.unwrap();
        if page.is_empty() {
            break;
        }
        cursor = page.last().map(|e| (e.created_at, e.post_id.clone()));
        read.extend(page);
    }
    assert_eq!(read, expected);
    assert_eq!(read.first().map(|e| e.post_id.as_str()), Some("p008"));

    // The cursor is exclusive even within one millisecond: p005 and p004
    // share a time, so after p005 comes p004.
    let after = f
        .read(&owner, Some((1_700_000_000_002, "p005".into())), 2)
        .await
        .unwrap();
    let ids: Vec<&str> = after.iter().map(|e| e.post_id.as_str()).collect();
    assert_eq!(ids, ["p004", "p003"]);
    assert!(f.read(&id("empty"), None, 10).await.unwrap().is_empty());
}

async fn pulled_authors_are_marked_and_unmarked(store: &Store) {
    let f = &store.feed;
    let (star, other) = (id("star"), id("other"));
    assert!(!f.pulled_authors().await.unwrap().contains(&star));
    assert_eq!(f.pull_state(&star).await.unwrap(), PullState::Pushed);
    f.set_pull_state(&star, PullState::Pulled, 1_000)
        .await
        .unwrap();
    f.set_pull_state(&star, PullState::Pulled, 2_000)
        .await
        .unwrap();
    f.set_pull_state(&other, PullState::Pushed, 2_000)
        .await
        .unwrap();
    let pulled = f.pulled_authors().await.unwrap();
    assert!(pulled.contains(&star), "marked twice, present once");
    assert!(
        !pulled.contains(&other),
        "unmarking an unmarked author is a no-op"
    );
    assert_eq!(f.pull_state(&star).await.unwrap(), PullState::Pulled);
    f.set_pull_state(&star, PullState::Pushed, 3_000)
        .await
        .unwrap();
    assert!(!f.pulled_authors().await.unwrap().contains(&star));
    assert_eq!(f.pull_state(&star).await.unwrap(), PullState::Pushed);
}

async fn cooling_authors_are_pulled_until_their_time(store: &Store) {
    let f = &store.feed;
    let (cooling, ended, repulled) = (id("cooling"), id("ended"), id("repulled"));
    let now = now_millis();
    for author in [&cooling, &ended, &repulled] {
        f.set_pull_state(author, PullState::Pulled, now)
            .await
            .unwrap();
    }
    let later = PullState::Cooling {
        until: now + 600_000,
    };
    f.set_pull_state(&cooling, later, now).await.unwrap();
    // A cool-down whose time is up is over, whatever the engine still holds.
    f.set_pull_state(&ended, PullState::Cooling { until: now - 1 }, now)
        .await
        .unwrap();
    let soon = PullState::Cooling { until: now + 1_500 };
    f.set_pull_state(&repulled, soon, now).await.unwrap();
    f.set_pull_state(&repulled, PullState::Pulled, now + 1)
        .await
        .unwrap();
    assert_eq!(f.pull_state(&cooling).await.unwrap(), later);
    assert_eq!(f.pull_state(&ended).await.unwrap(), PullState::Pushed);
    let pulled = f.pulled_authors().await.unwrap();
    assert!(pulled.contains(&cooling), "readers pull while cooling");
    assert!(!pulled.contains(&ended));
    assert!(pulled.contains(&repulled));
    // Pulled again during a cool-down stays pulled after it would have
    // ended (on CQL: the cooling row's TTL no longer applies). A control
    // author cooling just as long shows when that time has passed.
    let control = id("control");
    f.set_pull_state(&control, soon, now).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while f.pulled_authors().await.unwrap().contains(&control) {
        assert!(
            Instant::now() < deadline,
            "the control cool-down never ended"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(f.pull_state(&control).await.unwrap(), PullState::Pushed);
    assert_eq!(f.pull_state(&repulled).await.unwrap(), PullState::Pulled);
    assert!(f.pulled_authors().await.unwrap().contains(&repulled));
}

async fn feed_trim_keeps_the_newest(store: &Store) {
    let f = &store.feed;
    let owner = id("reader");
    f.append_many(&feed_entries(&owner, 10)).await.unwrap();
    let post_ids =
        |entries: Vec<FeedEntry>| entries.into_iter().map(|e| e.post_id).collect::<Vec<_>>();

    f.trim(&owner, 20).await.unwrap();
    assert_eq!(
        f.read(&owner, None, 100).await.unwrap().len(),
        10,
        "nothing beyond keep"
    );
    f.trim(&owner, 5).await.unwrap();
    assert_eq!(
        post_ids(f.read(&owner, None, 100).await.unwrap()),
        ["p009", "p008", "p007", "p006", "p005"]
    );
    f.trim(&owner, 0).await.unwrap();
    assert!(f.read(&owner, None, 100).await.unwrap().is_empty());
    f.trim(&id("empty"), 3).await.unwrap();
}

async fn feed_remove_deletes_only_the_named_entries(store: &Store) {
    let f = &store.feed;
    let (owner, other) = (id("reader"), id("other"));
    let mine = feed_entries(&owner, 6);
    let theirs = feed_entries(&other, 6);
    f.append_many(&mine).await.unwrap();
    f.append_many(&theirs).await.unwrap();
    // p002 of the owner, and a post id the owner has at another time: only
    // the exact (owner, created_at, post_id) goes.
    let mut stale = mine[3].clone();
    stale.1.created_at += 1;
    f.remove_many(&[mine[2].clone(), stale, (owner.clone(), mine[5].1.clone())])
        .await
        .unwrap();
    f.remove_many(&[mine[2].clone()]).await.unwrap(); // idempotent
    let ids = |entries: Vec<FeedEntry>| entries.into_iter().map(|e| e.post_id).collect::<Vec<_>>();
    assert_eq!(
        ids(f.read(&owner, None, 100).await.unwrap()),
        ["p004", "p003", "p001", "p000"]
    );
    assert_eq!(
        f.read(&other, None, 100).await.unwrap().len(),
        6,
        "other feeds keep theirs"
    );
}

async fn counters_sum_and_default_to_zero(store: &Store) {
    let c = &store.counters;
    let (scope, post) = (id("likes"), id("post"));
    for _ in 0..3 {
        c.add(&scope, &post, 1).await.unwrap();
    }
    c.add(&scope, &post, -1).await.unwrap();
    assert_eq!(c.get(&scope, &post).await.unwrap(), 2);

    let (template, sent) = (id("template"), "sent".to_owned());
    c.add_many(&[
        (scope.clone(), post.clone(), 5),
        (template.clone(), sent.clone(), 10),
        (scope.clone(), post.clone(), 3),
        (template.clone(), "opened".into(), 4),
    ])
    .await
    .unwrap();
    assert_eq!(c.get(&scope, &post).await.unwrap(), 10);
    assert_eq!(c.get(&id("nothing"), "here").await.unwrap(), 0);

    let many = c
        .get_many(
            &template,
            &[sent.clone(), "opened".into(), "clicked".into()],
        )
        .await
        .unwrap();
    assert_eq!(
        many,
        HashMap::from([(sent, 10), ("opened".into(), 4), ("clicked".into(), 0)])
    );
}

/// A point in the past of its own, so a schedule test's due items are few
/// and its own, even next to other runs' items in a shared keyspace (legacy
/// unscoped items are returned in every scope).
fn private_past() -> Millis {
    now_millis() - 86_400_000 * (2 + (Uuid::new_v4().as_u128() % 3000) as Millis)
}

async fn schedule_returns_due_items_oldest_first(store: &Store) {
    let s = &store.schedule;
    let now = private_past();
    let scope = id("scope");
    let item = |due_at: Millis, payload: &[u8]| ScheduledItem {
        scope: scope.clone(),
        item_id: id("item"),
        due_at,
        payload: payload.to_vec(),
    };
    let older = item(now - 90_000, b"older");
    let old = item(now - 1_000, b"");
    let later = item(now + 60_000, b"later");
    for i in [&later, &old, &older] {
        s.put(i).await.unwrap();
    }

    assert_eq!(
        s.due(&scope, now, 10).await.unwrap(),
        vec![older.clone(), old.clone()]
    );
    assert_eq!(
        s.due(&scope, now, 1).await.unwrap(),
        vec![older.clone()],
        "limit, oldest first"
    );

    s.remove(&scope, &older.item_id, older.due_at)
        .await
        .unwrap();
    assert_eq!(s.due(&scope, now, 10).await.unwrap(), vec![old.clone()]);
    assert_eq!(
        s.due(&scope, now + 60_000, 10).await.unwrap(),
        vec![old.clone(), later.clone()]
    );

    s.remove(&scope, &old.item_id, old.due_at).await.unwrap();
    s.remove(&scope, &later.item_id, later.due_at)
        .await
        .unwrap();
    assert!(s.due(&scope, now + 120_000, 10).await.unwrap().is_empty());
}

/// Deployments sharing a store (same keyspace or file, different topic
/// prefixes) each release only their own items.
async fn schedule_scopes_are_separate(store: &Store) {
    let s = &store.schedule;
    let now = private_past();
    let (a, b) = (id("staging"), id("prod"));
    let item = |scope: &str, item_id: &str, due_at: Millis| ScheduledItem {
        scope: scope.to_owned(),
        item_id: item_id.to_owned(),
        due_at,
        payload: scope.as_bytes().to_vec(),
    };
    // The same notification held by both deployments, at the same time.
    let shared_id = id("item");
    let in_a = item(&a, &shared_id, now - 2_000);
    let in_b = item(&b, &shared_id, now - 2_000);
    let only_a = item(&a, &id("item"), now - 1_000);
    for i in [&in_a, &in_b, &only_a] {
        s.put(i).await.unwrap();
    }

    assert_eq!(
        s.due(&a, now, 10).await.unwrap(),
        vec![in_a.clone(), only_a.clone()]
    );
    assert_eq!(s.due(&b, now, 10).await.unwrap(), vec![in_b.clone()]);
    assert!(
        s.due(&id("elsewhere"), now, 10).await.unwrap().is_empty(),
        "a third deployment sees neither"
    );

    // Removing in one scope leaves the other's item of the same id.
    s.remove(&a, &shared_id, in_a.due_at).await.unwrap();
    assert_eq!(s.due(&a, now, 10).await.unwrap(), vec![only_a.clone()]);
    assert_eq!(s.due(&b, now, 10).await.unwrap(), vec![in_b.clone()]);
    // ...and removing an id a scope does not hold does nothing to others.
    s.remove(&b, &only_a.item_id, only_a.due_at).await.unwrap();
    assert_eq!(s.due(&a, now, 10).await.unwrap(), vec![only_a.clone()]);

    s.remove(&a, &only_a.item_id, only_a.due_at).await.unwrap();
    s.remove(&b, &shared_id, in_b.due_at).await.unwrap();
    assert!(s.due(&a, now, 10).await.unwrap().is_empty());
    assert!(s.due(&b, now, 10).await.unwrap().is_empty());
}

async fn apps_put_revoke_and_list(store: &Store) {
    let a = &store.apps;
    let prefix = id("app");
    let app = |suffix: &str, quota: Option<u32>| App {
        app_key: format!("{prefix}-{suffix}"),
        secret_hash: "sha256:abcd".into(),
        name: format!("billing {suffix}"),
        permissions: if quota.is_some() {
            vec!["notify:send".into(), "feed:publish".into()]
        } else {
            Vec::new()
        },
        quota_per_sec: quota,
        revoked: false,
        created_at: 1_700_000_000_000,
    };
    let (billing, cron) = (app("b", Some(100)), app("a", None));
    a.put(&billing).await.unwrap();
    a.put(&cron).await.unwrap();
    assert_eq!(
        a.get(&billing.app_key).await.unwrap(),
        Some(billing.clone())
    );
    assert_eq!(a.get(&format!("{prefix}-missing")).await.unwrap(), None);

    assert!(a.revoke(&billing.app_key).await.unwrap());
    assert!(!a.revoke(&format!("{prefix}-missing")).await.unwrap());
    assert_eq!(
        a.get(&format!("{prefix}-missing")).await.unwrap(),
        None,
        "revoke does not create"
    );

    let ours: Vec<App> = a
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|x| x.app_key.starts_with(&prefix))
        .collect();
    let revoked_billing = App {
        revoked: true,
        ..billing
    };
    assert_eq!(ours, vec![cron, revoked_billing], "ordered by key");
}

fn admission(key: &str, at: Millis, notification_id: &str, ttl: Duration) -> NewAdmission {
    (key.to_owned(), at, notification_id.to_owned(), ttl)
}

async fn rate_limit_admissions_of_many_keys_oldest_first(store: &Store) {
    let r = &store.rate_limits;
    let hour = Duration::from_secs(3600);
    let (sms, email, unknown) = (id("u sms"), id("u email"), id("u ios"));
    let now = now_millis();
    r.admit_many(&[
        admission(&sms, now - 2_000, "n2", hour),
        admission(&email, now - 5_000, "n1", hour),
        admission(&sms, now - 3_000, "n1", hour),
        admission(&sms, now - 2_000, "n0", hour),
    ])
    .await
    .unwrap();
    r.admit_many(&[admission(&sms, now - 1_000, "n3", hour)])
        .await
        .unwrap();

    let found = r
        .admissions_many(&[sms.clone(), unknown.clone(), email.clone(), sms.clone()])
        .await
        .unwrap();
    let expected: HashMap<String, Vec<(Millis, String)>> = HashMap::from([
        (
            sms.clone(),
            vec![
                (now - 3_000, "n1".to_owned()),
                (now - 2_000, "n0".to_owned()),
                (now - 2_000, "n2".to_owned()),
                (now - 1_000, "n3".to_owned()),
            ],
        ),
        (email.clone(), vec![(now - 5_000, "n1".to_owned())]),
    ]);
    assert_eq!(
        found, expected,
        "oldest first, ties by id; unknown keys absent"
    );
    assert_eq!(
        r.admissions_many(std::slice::from_ref(&unknown))
            .await
            .unwrap(),
        HashMap::new(),
        "only unknown keys"
    );
    assert!(r.admissions_many(&[]).await.unwrap().is_empty());
    r.admit_many(&[]).await.unwrap();
    assert_eq!(
        r.admissions_many(std::slice::from_ref(&email))
            .await
            .unwrap()[&email]
            .len(),
        1,
        "keys are independent"
    );
}

/// The TTL of the admissions that expire in the test below.
const BRIEF_TTL: Duration = Duration::from_secs(4);

async fn rate_limit_admissions_expire_with_their_ttl(store: &Store) {
    let r = &store.rate_limits;
    let (mixed, brief_only) = (id("u sms"), id("u email"));
    let now = now_millis();
    r.admit_many(&[
        // Brief, yet long enough to be read back on a loaded CI machine.
        admission(&mixed, now, "brief", BRIEF_TTL),
        admission(&mixed, now, "kept", Duration::from_secs(600)),
        admission(&brief_only, now, "brief", BRIEF_TTL),
    ])
    .await
    .unwrap();
    let both = [mixed.clone(), brief_only.clone()];
    let found = r.admissions_many(&both).await.unwrap();
    assert_eq!(found[&mixed].len(), 2);
    assert_eq!(found[&brief_only].len(), 1);

    // Expiry is polled for (CQL TTLs count whole seconds from the second
    // of the write), with a deadline well past the TTL.
    let kept_only = HashMap::from([(mixed.clone(), vec![(now, "kept".to_owned())])]);
    let deadline = Instant::now() + BRIEF_TTL + Duration::from_secs(15);
    loop {
        let found = r.admissions_many(&both).await.unwrap();
        if found == kept_only {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expired admissions are gone, and a key with none left is absent: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        now_millis() >= now + 3_000,
        "nothing expired before its TTL"
    );

    // An expired pair can be admitted again.
    r.admit_many(&[admission(
        &brief_only,
        now + 3_000,
        "brief",
        Duration::from_secs(600),
    )])
    .await
    .unwrap();
    assert_eq!(
        r.admissions_many(std::slice::from_ref(&brief_only))
            .await
            .unwrap()[&brief_only],
        vec![(now + 3_000, "brief".to_owned())]
    );
}

async fn rate_limit_readmission_is_idempotent(store: &Store) {
    let r = &store.rate_limits;
    let key = id("u sms");
    let hour = Duration::from_secs(3600);
    let now = now_millis();
    let batch = [
        admission(&key, now, "n1", hour),
        admission(&key, now + 10, "n2", hour),
    ];
    // A batch written again (its `finish` retried, or a replay).
    for _ in 0..3 {
        r.admit_many(&batch).await.unwrap();
    }
    let read = || async {
        r.admissions_many(std::slice::from_ref(&key))
            .await
            .unwrap()
            .remove(&key)
            .unwrap_or_default()
    };
    assert_eq!(
        read().await,
        vec![(now, "n1".to_owned()), (now + 10, "n2".to_owned())],
        "each pair once"
    );

    r.admit_many(&[admission(&key, now + 20, "n1", hour)])
        .await
        .unwrap();
    assert_eq!(
        read().await,
        vec![(now + 10, "n2".to_owned()), (now + 20, "n1".to_owned())],
        "admitting a pair again replaces its time"
    );

    r.admit_many(&[
        admission(&key, now + 30, "n3", hour),
        admission(&key, now + 40, "n3", hour),
        admission(&key, now + 35, "n3", hour),
    ])
    .await
    .unwrap();
    assert_eq!(
        read().await,
        vec![
            (now + 10, "n2".to_owned()),
            (now + 20, "n1".to_owned()),
            (now + 35, "n3".to_owned()),
        ],
        "a pair given twice in one call counts as its last occurrence"
    );
}

// ---------------------------------------------------------------- inbox

/// Long enough never to expire during a test.
const INBOX_TTL: Duration = Duration::from_secs(3600);

fn inbox_item(user: &str, notification_id: &str, created_at: Millis) -> InboxItem {
    InboxItem {
        user_id: user.to_owned(),
        notification_id: notification_id.to_owned(),
        created_at,
        category: None,
        template_name: Some("welcome".into()),
        title: Some(format!("title of {notification_id}")),
        body: None,
        action_url: None,
        avatar_url: None,
        data: BTreeMap::new(),
        read_at: None,
        archived_at: None,
    }
}

fn inbox_query(filter: InboxFilter, category: Option<&str>, limit: u32) -> InboxQuery {
    InboxQuery {
        filter,
        category: category.map(str::to_owned),
        before: None,
        limit,
    }
}

fn inbox_ids(items: &[InboxItem]) -> Vec<String> {
    items.iter().map(|i| i.notification_id.clone()).collect()
}

/// The ids of a view, page by page, each cursor the last item of the page
/// before.
async fn inbox_pages(store: &Store, user: &str, mut query: InboxQuery) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    loop {
        let page = store.inbox.list(user, &query).await.unwrap();
        assert!(page.len() <= query.limit as usize, "{page:?}");
        let Some(last) = page.last() else {
            return pages;
        };
        query.before = Some((last.created_at, last.notification_id.clone()));
        pages.push(inbox_ids(&page));
        assert!(pages.len() <= 100, "the pages never end: {pages:?}");
    }
}

/// One view whole, in one page.
async fn inbox_view(
    store: &Store,
    user: &str,
    filter: InboxFilter,
    category: Option<&str>,
) -> Vec<String> {
    let items = store
        .inbox
        .list(user, &inbox_query(filter, category, 1_000))
        .await
        .unwrap();
    inbox_ids(&items)
}

fn strings(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|&s| s.to_owned()).collect()
}

async fn inbox_put_is_idempotent_and_keeps_the_state(store: &Store) {
    let inbox = &store.inbox;
    let user = id("inbox");
    let mut full = inbox_item(&user, "n1", 1_000);
    full.category = Some("social".into());
    full.body = Some("Ada liked your post".into());
    full.action_url = Some("https://example.com/p/1".into());
    full.avatar_url = Some("https://example.com/a.png".into());
    full.data = BTreeMap::from([
        ("post".into(), "p1".into()),
        ("empty".into(), String::new()),
    ]);
    let mut bare = inbox_item(&user, "n0", 500);
    bare.title = None;

    assert!(inbox.put(&full, 100, INBOX_TTL).await.unwrap(), "new");
    assert!(inbox.put(&bare, 100, INBOX_TTL).await.unwrap(), "new");
    assert_eq!(inbox.get(&user, "n1").await.unwrap(), Some(full.clone()));
    assert_eq!(
        inbox.get(&user, "n0").await.unwrap(),
        Some(bare.clone()),
        "absent fields stay absent"
    );
    assert_eq!(inbox.get(&user, "n2").await.unwrap(), None);
    assert_eq!(
        inbox.get(&id("inbox"), "n1").await.unwrap(),
        None,
        "inboxes are per user"
    );

    assert!(
        inbox
            .mark(&user, "n1", InboxAction::Read, 2_000)
            .await
            .unwrap()
    );
    // A replay, even one that differs, changes nothing.
    let mut replay = full.clone();
    replay.title = Some("changed".into());
    replay.created_at = 9_000;
    for _ in 0..2 {
        assert!(
            !inbox.put(&replay, 100, INBOX_TTL).await.unwrap(),
            "a replay is not new"
        );
    }
    let mut expected = full.clone();
    expected.read_at = Some(2_000);
    assert_eq!(
        inbox.get(&user, "n1").await.unwrap(),
        Some(expected.clone()),
        "state kept"
    );
    assert_eq!(
        inbox
            .list(&user, &inbox_query(InboxFilter::All, None, 10))
            .await
            .unwrap(),
        vec![expected, bare],
        "one item per notification, at its first time"
    );
    assert_eq!(
        inbox.counts(&user).await.unwrap(),
        InboxCounts {
            unread: 1,
            unseen: 2,
            total: 2
        }
    );
}

async fn inbox_cap_deletes_the_oldest(store: &Store) {
    let inbox = &store.inbox;
    let user = id("inbox");
    let cap = 3;
    for (n, at) in [("n1", 1_000), ("n2", 3_000), ("n3", 2_000)] {
        assert!(
            inbox
                .put(&inbox_item(&user, n, at), cap, INBOX_TTL)
                .await
                .unwrap()
        );
    }
    // Archived items count: the cap bounds what is stored.
    assert!(
        inbox
            .mark(&user, "n2", InboxAction::Archive, 5_000)
            .await
            .unwrap()
    );
    assert!(
        inbox
            .put(&inbox_item(&user, "n4", 4_000), cap, INBOX_TTL)
            .await
            .unwrap()
    );
    assert_eq!(
        inbox_view(store, &user, InboxFilter::All, None).await,
        strings(&["n4", "n2", "n3"])
    );
    assert_eq!(
        inbox.get(&user, "n1").await.unwrap(),
        None,
        "the oldest went"
    );
    assert!(
        !inbox
            .mark(&user, "n1", InboxAction::Read, 5_000)
            .await
            .unwrap()
    );

    // An item older than a full inbox is new, and the oldest: it goes at once.
    assert!(
        inbox
            .put(&inbox_item(&user, "n0", 500), cap, INBOX_TTL)
            .await
            .unwrap()
    );
    assert_eq!(
        inbox_view(store, &user, InboxFilter::All, None).await,
        strings(&["n4", "n2", "n3"])
    );

    // Ties in time go by id: n4 is older than n5 and n6.
    for n in ["n5", "n6"] {
        assert!(
            inbox
                .put(&inbox_item(&user, n, 4_000), cap, INBOX_TTL)
                .await
                .unwrap()
        );
    }
    assert_eq!(
        inbox_view(store, &user, InboxFilter::All, None).await,
        strings(&["n6", "n5", "n4"])
    );
    // A replay of a kept item deletes nothing.
    assert!(
        !inbox
            .put(&inbox_item(&user, "n4", 4_000), cap, INBOX_TTL)
            .await
            .unwrap()
    );
    assert_eq!(
        inbox_view(store, &user, InboxFilter::All, None).await,
        strings(&["n6", "n5", "n4"])
    );
    assert_eq!(inbox.counts(&user).await.unwrap().total, 3);
}

/// Puts of one user that overlap (a sender's concurrency, a retry tier)
/// still leave exactly the newest `cap` items.
async fn inbox_overlapping_puts_keep_exactly_the_newest(store: &Store) {
    let inbox = &store.inbox;
    let user = id("inbox");
    let cap = 5;
    let items: Vec<InboxItem> = (0..24)
        .map(|i| inbox_item(&user, &format!("n{i:02}"), 1_000 + (i * 7) % 24))
        .collect();
    let answers =
        futures::future::join_all(items.iter().map(|item| inbox.put(item, cap, INBOX_TTL))).await;
    assert!(answers.into_iter().all(|new| new.unwrap()), "all new");
    let mut newest: Vec<(Millis, String)> = items
        .iter()
        .map(|i| (i.created_at, i.notification_id.clone()))
        .collect();
    newest.sort_by(|a, b| b.cmp(a));
    let expected: Vec<String> = newest
        .into_iter()
        .take(cap as usize)
        .map(|(_, n)| n)
        .collect();
    assert_eq!(
        inbox_view(store, &user, InboxFilter::All, None).await,
        expected
    );
    assert_eq!(inbox.counts(&user).await.unwrap().total, cap);
}

async fn inbox_pages_reach_every_item_once_in_order(store: &Store) {
    let inbox = &store.inbox;
    let user = id("inbox");
    // Three items per time, put out of order.
    let mut all: Vec<(Millis, String)> = (0..25)
        .map(|i| (1_000 + (i / 3) * 10, format!("n{:02}", (i * 7) % 25)))
        .collect();
    for (at, n) in all.iter().rev() {
        assert!(
            inbox
                .put(&inbox_item(&user, n, *at), 100, INBOX_TTL)
                .await
                .unwrap()
        );
    }
    all.sort_by(|a, b| b.cmp(a));
    let newest_first: Vec<String> = all.iter().map(|(_, n)| n.clone()).collect();

    let pages = inbox_pages(store, &user, inbox_query(InboxFilter::Inbox, None, 4)).await;
    assert_eq!(pages.len(), 7, "{pages:?}");
    assert!(pages[..6].iter().all(|p| p.len() == 4), "{pages:?}");
    assert_eq!(pages.concat(), newest_first, "each item once, newest first");

    // Filtered pages skip what the filter drops, and still meet every item.
    for n in newest_first.iter().step_by(3) {
        assert!(
            inbox
                .mark(&user, n, InboxAction::Read, 5_000)
                .await
                .unwrap()
        );
    }
    let unread: Vec<String> = newest_first
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, n)| n.clone())
        .collect();
    let pages = inbox_pages(store, &user, inbox_query(InboxFilter::Unread, None, 2)).await;
    assert_eq!(pages.concat(), unread);
    assert_eq!(pages.len(), unread.len().div_ceil(2));

    // A cursor is exclusive, and a limit of 0 lists nothing.
    let mut after_first = inbox_query(InboxFilter::All, None, 1);
    after_first.before = Some(all[0].clone());
    assert_eq!(
        inbox_ids(&inbox.list(&user, &after_first).await.unwrap()),
        vec![newest_first[1].clone()]
    );
    assert!(
        inbox
            .list(&user, &inbox_query(InboxFilter::All, None, 0))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        inbox
            .list(&id("inbox"), &inbox_query(InboxFilter::All, None, 10))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn inbox_filters_by_state_and_category(store: &Store) {
    let inbox = &store.inbox;
    let user = id("inbox");
    let categories = [
        ("a", Some("social")),
        ("b", Some("social")),
        ("c", Some("billing")),
        ("d", Some("billing")),
        ("e", None),
    ];
    for (i, (n, category)) in (0..).zip(categories) {
        let mut item = inbox_item(&user, n, 1_000 + i);
        item.category = category.map(str::to_owned);
        assert!(inbox.put(&item, 100, INBOX_TTL).await.unwrap());
    }
    for (n, action) in [
        ("b", InboxAction::Read),
        ("c", InboxAction::Archive),
        ("d", InboxAction::Read),
        ("d", InboxAction::Archive),
    ] {
        assert!(inbox.mark(&user, n, action, 2_000).await.unwrap());
    }
    use InboxFilter::{All, Archived, Inbox, Unread};
    for (filter, category, expected) in [
        (Inbox, None, &["e", "b", "a"][..]),
        (Unread, None, &["e", "a"]),
        (Archived, None, &["d", "c"]),
        (All, None, &["e", "d", "c", "b", "a"]),
        (Inbox, Some("social"), &["b", "a"]),
        (Unread, Some("social"), &["a"]),
        (Archived, Some("social"), &[]),
        (Inbox, Some("billing"), &[]),
        (Archived, Some("billing"), &["d", "c"]),
        (All, Some("billing"), &["d", "c"]),
        (All, Some("unknown"), &[]),
    ] {
        assert_eq!(
            inbox_view(store, &user, filter, category).await,
            strings(expected),
            "{filter:?} {category:?}"
        );
    }
    assert_eq!(
        inbox.counts(&user).await.unwrap(),
        InboxCounts {
            unread: 2,
            unseen: 3,
            total: 3
        },
        "archived items count in nothing"
    );
}

async fn inbox_marks_are_idempotent_and_refuse_unknown_items(store: &Store) {
    let inbox = &store.inbox;
    let user = id("inbox");
    let item = inbox_item(&user, "n1", 1_000);
    assert!(inbox.put(&item, 100, INBOX_TTL).await.unwrap());
    let state = || async {
        let found = inbox.get(&user, "n1").await.unwrap().expect("the item");
        (found.read_at, found.archived_at)
    };
    use InboxAction::{Archive, Read, Unarchive, Unread};
    for (action, at, expected) in [
        (Read, 2_000, (Some(2_000), None)),
        (Read, 3_000, (Some(2_000), None)),
        (Unread, 4_000, (None, None)),
        (Unread, 4_500, (None, None)),
        (Read, 5_000, (Some(5_000), None)),
        (Archive, 6_000, (Some(5_000), Some(6_000))),
        (Archive, 7_000, (Some(5_000), Some(6_000))),
        (Unarchive, 8_000, (Some(5_000), None)),
        (Unarchive, 8_500, (Some(5_000), None)),
    ] {
        assert!(
            inbox.mark(&user, "n1", action, at).await.unwrap(),
            "{action:?}"
        );
        assert_eq!(state().await, expected, "after {action:?} at {at}");
    }
    let mut expected = item.clone();
    expected.read_at = Some(5_000);
    assert_eq!(
        inbox.get(&user, "n1").await.unwrap(),
        Some(expected),
        "marks change only the state"
    );

    let stranger = id("inbox");
    for action in [Read, Unread, Archive, Unarchive] {
        assert!(
            !inbox.mark(&user, "n2", action, 9_000).await.unwrap(),
            "{action:?}"
        );
        assert!(
            !inbox.mark(&stranger, "n1", action, 9_000).await.unwrap(),
            "{action:?}"
        );
    }
    assert_eq!(
        inbox.get(&stranger, "n1").await.unwrap(),
        None,
        "a mark creates nothing"
    );
    assert_eq!(
        inbox.get(&user, "n2").await.unwrap(),
        None,
        "a mark creates nothing"
    );
}

async fn inbox_mark_all_read_answers_how_many_changed(store: &Store) {
    let inbox = &store.inbox;
    let user = id("inbox");
    for (i, n) in (0..).zip(["n1", "n2", "n3", "n4", "n5"]) {
        assert!(
            inbox
                .put(&inbox_item(&user, n, 1_000 + i), 100, INBOX_TTL)
                .await
                .unwrap()
        );
    }
    assert!(
        inbox
            .mark(&user, "n2", InboxAction::Read, 100)
            .await
            .unwrap()
    );
    assert!(
        inbox
            .mark(&user, "n3", InboxAction::Archive, 100)
            .await
            .unwrap()
    );

    assert_eq!(
        inbox.mark_all_read(&user, 200).await.unwrap(),
        3,
        "n1, n4, n5"
    );
    let user = user.as_str();
    let read_at =
        |n: &'static str| async move { inbox.get(user, n).await.unwrap().expect("item").read_at };
    assert_eq!(read_at("n1").await, Some(200));
    assert_eq!(
        read_at("n2").await,
        Some(100),
        "read before: its first time stays"
    );
    assert_eq!(read_at("n3").await, None, "archived items are left alone");
    assert_eq!(
        inbox.mark_all_read(user, 300).await.unwrap(),
        0,
        "nothing left"
    );
    assert_eq!(read_at("n5").await, Some(200));
    assert_eq!(
        inbox.counts(user).await.unwrap(),
        InboxCounts {
            unread: 0,
            unseen: 4,
            total: 4
        }
    );
    assert!(
        inbox
            .mark(user, "n3", InboxAction::Unarchive, 400)
            .await
            .unwrap()
    );
    assert_eq!(inbox.counts(user).await.unwrap().unread, 1);
    assert_eq!(
        inbox.mark_all_read(&id("inbox"), 300).await.unwrap(),
        0,
        "an empty inbox"
    );
}

async fn inbox_seen_mark_never_moves_back(store: &Store) {
    let inbox = &store.inbox;
    let user = id("inbox");
    assert_eq!(inbox.counts(&user).await.unwrap(), InboxCounts::default());
    inbox.mark_seen(&user, 500).await.unwrap();
    assert_eq!(
        inbox.counts(&user).await.unwrap(),
        InboxCounts::default(),
        "a mark alone counts nothing"
    );
    for (n, at) in [("n1", 1_000), ("n2", 2_000), ("n3", 3_000)] {
        assert!(
            inbox
                .put(&inbox_item(&user, n, at), 100, INBOX_TTL)
                .await
                .unwrap()
        );
    }
    let unseen = || async { inbox.counts(&user).await.unwrap().unseen };
    assert_eq!(unseen().await, 3);
    inbox.mark_seen(&user, 2_000).await.unwrap();
    assert_eq!(unseen().await, 1, "only items after the mark");
    inbox.mark_seen(&user, 1_000).await.unwrap();
    assert_eq!(unseen().await, 1, "an older mark does not move it back");
    inbox.mark_seen(&user, 2_000).await.unwrap();
    assert_eq!(unseen().await, 1);

    assert!(
        inbox
            .put(&inbox_item(&user, "n4", 2_500), 100, INBOX_TTL)
            .await
            .unwrap()
    );
    assert_eq!(unseen().await, 2, "a new item after the mark");
    assert!(
        inbox
            .mark(&user, "n3", InboxAction::Archive, 4_000)
            .await
            .unwrap()
    );
    assert_eq!(unseen().await, 1, "archived items are not counted");
    inbox.mark_seen(&user, 5_000).await.unwrap();
    assert_eq!(
        inbox.counts(&user).await.unwrap(),
        InboxCounts {
            unread: 3,
            unseen: 0,
            total: 3
        },
        "seeing is not reading"
    );
    let other = id("inbox");
    assert!(
        inbox
            .put(&inbox_item(&other, "n1", 1_000), 100, INBOX_TTL)
            .await
            .unwrap()
    );
    assert_eq!(
        inbox.counts(&other).await.unwrap().unseen,
        1,
        "marks are per user"
    );
}

async fn inbox_items_expire_with_their_ttl(store: &Store) {
    let inbox = &store.inbox;
    let user = id("inbox");
    let brief = Duration::from_secs(2);
    let now = now_millis();
    let started = Instant::now();
    assert!(
        inbox
            .put(&inbox_item(&user, "brief", now), 10, brief)
            .await
            .unwrap()
    );
    assert!(
        inbox
            .put(&inbox_item(&user, "kept", now - 1), 10, INBOX_TTL)
            .await
            .unwrap()
    );
    let read = inbox
        .mark(&user, "brief", InboxAction::Read, now)
        .await
        .unwrap();
    let counts = inbox.counts(&user).await.unwrap();
    if started.elapsed() < brief {
        // Not stalled past the TTL already.
        assert!(read);
        assert_eq!(counts.total, 2, "{counts:?}");
    }

    let deadline = Instant::now() + Duration::from_secs(15);
    while inbox.get(&user, "brief").await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "the item outlived its TTL by far"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Clocks may differ by a tick, not by a second.
    assert!(
        started.elapsed() + Duration::from_millis(100) >= brief,
        "gone early: {:?}",
        started.elapsed()
    );
    assert_eq!(
        inbox_view(store, &user, InboxFilter::All, None).await,
        strings(&["kept"])
    );
    assert_eq!(
        inbox.counts(&user).await.unwrap(),
        InboxCounts {
            unread: 1,
            unseen: 1,
            total: 1
        }
    );
    assert!(
        !inbox
            .mark(&user, "brief", InboxAction::Unread, now)
            .await
            .unwrap()
    );
    assert_eq!(
        inbox.mark_all_read(&user, now).await.unwrap(),
        1,
        "only the kept item"
    );

    // Delivered again once expired: a new item, with none of the old state.
    assert!(
        inbox
            .put(&inbox_item(&user, "brief", now), 10, INBOX_TTL)
            .await
            .unwrap()
    );
    assert_eq!(
        inbox.get(&user, "brief").await.unwrap(),
        Some(inbox_item(&user, "brief", now))
    );
}

// ---------------------------------------------------------------- schema migrations

/// Each migration test runs on a store of its own (a fresh SQLite file or a
/// fresh keyspace), since it is about what a whole schema goes through.
macro_rules! migration_tests {
    ($($test:ident),* $(,)?) => {
        mod migrations_sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Fresh::new(super::Engine::Sqlite).await).await;
                }
            )*
        }
        mod migrations_scylla {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Fresh::new(super::Engine::Scylla).await).await;
                }
            )*
        }
    };
}

migration_tests! {
    a_fresh_store_records_every_migration_once,
    a_store_of_the_previous_release_is_upgraded_and_keeps_its_data,
    a_store_migrated_by_a_newer_build_is_refused,
    scheduled_items_of_the_previous_release_are_released_after_the_upgrade,
    the_raw_write_baseline_inserts_every_row_and_leaves_nothing_behind,
}

#[derive(Clone, Copy)]
enum Engine {
    Sqlite,
    Scylla,
}

/// A store that does not exist yet: a path in a temp dir, or an unused
/// keyspace (dropped by `finish`).
struct Fresh {
    engine: Engine,
    url: String,
    keyspace: String,
    _dir: Option<tempfile::TempDir>,
}

/// The CQL server's address.
fn cql_address() -> String {
    std::env::var("TIDINGS_TEST_CQL").unwrap_or_else(|_| "127.0.0.1:19042".to_owned())
}

async fn cql_session() -> ::scylla::client::session::Session {
    ::scylla::client::session_builder::SessionBuilder::new()
        .known_node(cql_address())
        .build()
        .await
        .unwrap_or_else(|e| panic!("CQL server at {} is not usable: {e}", cql_address()))
}

/// The scripts of the release before versioned migrations (versions 1 to
/// 3), in order, from the engine's migrations folder.
fn previous_release_scripts(engine: &str) -> Vec<String> {
    let dir = format!("{}/migrations/{engine}", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            ["0001_", "0002_", "0003_"]
                .iter()
                .any(|v| name.starts_with(v))
        })
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "{dir}");
    files
        .iter()
        .map(|path| std::fs::read_to_string(path).expect("script"))
        .collect()
}

/// How the previous release split a CQL script: `--` comments dropped line
/// by line, then split on every `;`.
fn previous_release_statements(script: &str) -> Vec<String> {
    let code: String = script
        .lines()
        .map(|line| line.split_once("--").map_or(line, |(code, _comment)| code))
        .collect::<Vec<_>>()
        .join("\n");
    code.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Fresh {
    async fn new(engine: Engine) -> Fresh {
        let keyspace = format!("tidings_mig_{}", Uuid::now_v7().simple());
        match engine {
            Engine::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("tidings.db").display());
                Fresh {
                    engine,
                    url,
                    keyspace,
                    _dir: Some(dir),
                }
            }
            Engine::Scylla => Fresh {
                engine,
                url: format!("scylla://{}/{keyspace}", cql_address()),
                keyspace,
                _dir: None,
            },
        }
    }

    async fn connect(&self, migrate: bool) -> Result<Store, StoreError> {
        let opts = StoreOptions {
            migrate,
            ..StoreOptions::default()
        };
        Store::connect(&self.url, &opts).await
    }

    fn sqlite_path(&self) -> &str {
        self.url.strip_prefix("sqlite://").expect("sqlite url")
    }

    /// What `migrate` of the release before versioned migrations did: every
    /// script run whole, nothing recorded.
    async fn create_the_previous_way(&self) {
        match self.engine {
            Engine::Sqlite => {
                let conn = rusqlite::Connection::open(self.sqlite_path()).expect("open");
                conn.execute_batch("PRAGMA journal_mode = WAL;")
                    .expect("wal");
                for script in previous_release_scripts("sqlite") {
                    conn.execute_batch(&script)
                        .expect("previous release's script");
                }
            }
            Engine::Scylla => {
                let session = cql_session().await;
                let keyspace = include_str!("../migrations/cql/0000_keyspace.cql")
                    .replace("$keyspace", &self.keyspace)
                    .replace(
                        "$replication",
                        "{'class': 'SimpleStrategy', 'replication_factor': 1}",
                    );
                for statement in previous_release_statements(&keyspace) {
                    session
                        .query_unpaged(statement, ())
                        .await
                        .expect("keyspace");
                }
                session
                    .use_keyspace(&self.keyspace, false)
                    .await
                    .expect("use keyspace");
                for script in previous_release_scripts("cql") {
                    for statement in previous_release_statements(&script) {
                        session
                            .query_unpaged(statement.as_str(), ())
                            .await
                            .unwrap_or_else(|e| panic!("{statement}: {e}"));
                    }
                }
            }
        }
    }

    /// What the previous release's `ScheduleStore::put` wrote (its unscoped
    /// `scheduled` table).
    async fn put_the_previous_way(&self, item: &ScheduledItem) {
        match self.engine {
            Engine::Sqlite => {
                let conn = rusqlite::Connection::open(self.sqlite_path()).expect("open");
                conn.execute(
                    "INSERT INTO scheduled (item_id, due_at, payload) VALUES (?1, ?2, ?3)",
                    rusqlite::params![item.item_id, item.due_at, item.payload],
                )
                .expect("insert");
            }
            Engine::Scylla => {
                let insert = format!(
                    "INSERT INTO {}.scheduled (bucket, due_at, item_id, payload) VALUES (?, ?, ?, ?)",
                    self.keyspace
                );
                cql_session()
                    .await
                    .query_unpaged(
                        insert,
                        (
                            item.due_at.div_euclid(60_000),
                            item.due_at,
                            &item.item_id,
                            &item.payload,
                        ),
                    )
                    .await
                    .expect("insert");
            }
        }
    }

    /// Records a migration this build does not know, as a newer build would.
    async fn record_version(&self, version: i32) {
        match self.engine {
            Engine::Sqlite => {
                let conn = rusqlite::Connection::open(self.sqlite_path()).expect("open");
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?1, 'from_the_future', 'x', 0)",
                    [version],
                )
                .expect("insert");
            }
            Engine::Scylla => {
                let session = cql_session().await;
                let insert = format!(
                    "INSERT INTO {}.schema_migrations (version, name, checksum, applied_at) VALUES (?, 'from_the_future', 'x', 0)",
                    self.keyspace
                );
                session
                    .query_unpaged(insert, (version,))
                    .await
                    .expect("insert");
            }
        }
    }

    /// Drops the keyspace (a temp dir goes by itself).
    async fn finish(self) {
        if let Engine::Scylla = self.engine {
            let drop = format!("DROP KEYSPACE IF EXISTS {}", self.keyspace);
            cql_session()
                .await
                .query_unpaged(drop, ())
                .await
                .expect("drop keyspace");
        }
    }
}

/// `tidings bench`'s store baseline: every row inserted, through the
/// engine's driver, and no scratch table or file left in the store.
async fn the_raw_write_baseline_inserts_every_row_and_leaves_nothing_behind(fresh: Fresh) {
    let store = fresh.connect(true).await.expect("migrate");
    let run = tidings_store::baseline::raw_writes(&fresh.url, 1_500, &StoreOptions::default())
        .await
        .expect("raw writes");
    assert_eq!(run.rows, 1_500);
    assert!(run.rate() > 0.0 && run.in_flight > 0, "{run:?}");
    match fresh.engine {
        Engine::Sqlite => {
            let path = fresh.url.trim_start_matches("sqlite://");
            for suffix in ["", "-wal", "-shm"] {
                let scratch = format!("{path}.raw-writes{suffix}");
                assert!(
                    !std::path::Path::new(&scratch).exists(),
                    "{scratch} left behind"
                );
            }
        }
        Engine::Scylla => {
            let tables = cql_session()
                .await
                .query_unpaged(
                    "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
                    (fresh.keyspace.as_str(),),
                )
                .await
                .expect("tables")
                .into_rows_result()
                .expect("rows")
                .rows::<(String,)>()
                .expect("typed rows")
                .map(|r| r.expect("row").0)
                .collect::<Vec<_>>();
            assert!(!tables.is_empty(), "the store's own tables are there");
            assert!(
                !tables.iter().any(|t| t == "raw_write_baseline"),
                "scratch table left behind: {tables:?}"
            );
        }
    }
    drop(store);
    fresh.finish().await;
}

/// Every migration of this build applied, none changed since.
fn assert_up_to_date(status: &SchemaStatus) {
    assert!(status.pending().is_empty(), "{status}");
    assert!(status.unknown.is_empty() && !status.unversioned, "{status}");
    assert_eq!(status.store_version(), status.known_version(), "{status}");
    assert!(status.known_version() >= 3, "{status}");
    for m in &status.migrations {
        assert!(
            matches!(
                m.state,
                MigrationState::Applied {
                    checksum_matches: true,
                    ..
                }
            ),
            "{status}"
        );
    }
}

async fn a_fresh_store_records_every_migration_once(fresh: Fresh) {
    let before = schema_status(&fresh.url, &StoreOptions::default())
        .await
        .expect("status of a store that does not exist yet");
    assert_eq!(before.store_version(), 0, "{before}");
    assert_eq!(before.pending().len(), before.migrations.len(), "{before}");

    // Two processes starting at once: both succeed, each version recorded
    // once.
    let (a, b) = tokio::join!(fresh.connect(true), fresh.connect(true));
    let store = a.expect("first migrator");
    b.expect("second migrator");
    let status = store.schema_status().await.expect("status");
    assert_up_to_date(&status);
    assert_eq!(status.migrations.len(), before.migrations.len());

    // Re-connecting, or migrating again, applies nothing.
    assert_eq!(store.migrate().await.expect("migrate"), Vec::<u32>::new());
    let again = fresh.connect(true).await.expect("reconnect");
    let after = again.schema_status().await.expect("status");
    assert_eq!(after.migrations, status.migrations, "applied_at unchanged");
    let unmigrated = fresh
        .connect(false)
        .await
        .expect("connect without migrating");
    assert_eq!(
        unmigrated.schema_status().await.expect("status").migrations,
        status.migrations
    );
    let from_outside = schema_status(&fresh.url, &StoreOptions::default())
        .await
        .expect("status");
    assert_eq!(from_outside.migrations, status.migrations);
    assert!(
        from_outside.to_string().contains("applied"),
        "{from_outside}"
    );
    drop((store, again, unmigrated));
    fresh.finish().await;
}

async fn a_store_of_the_previous_release_is_upgraded_and_keeps_its_data(fresh: Fresh) {
    fresh.create_the_previous_way().await;
    let before = schema_status(&fresh.url, &StoreOptions::default())
        .await
        .expect("status");
    assert!(before.unversioned, "{before}");
    assert_eq!(before.store_version(), 0, "{before}");

    // The previous release's processes ran on it (and this build can too,
    // before it is migrated: its tables are all there).
    let old = fresh
        .connect(false)
        .await
        .expect("connect without migrating");
    let user = User {
        user_id: id("old-user"),
        display_name: "Ada".into(),
        avatar_url: None,
        locale: Some("en-GB".into()),
        email: Some("ada@example.com".into()),
        phone: None,
        updated_at: 1,
    };
    old.contacts.upsert_user(&user).await.expect("user");
    let device = Device {
        user_id: user.user_id.clone(),
        token: id("old-token"),
        platform: Platform::Android,
        registered_at: 5,
        invalidated_at: None,
    };
    old.contacts.register_device(&device).await.expect("device");
    let opted_out = Preference {
        user_id: user.user_id.clone(),
        channel: "sms".into(),
        category: None,
        opt_in: false,
        updated_at: 3,
    };
    old.preferences.set(&opted_out).await.expect("preference");
    let choice_only = Preference {
        user_id: id("old-choice-only"),
        channel: "email".into(),
        category: Some("digest".into()),
        opt_in: true,
        updated_at: 4,
    };
    old.preferences.set(&choice_only).await.expect("preference");
    old.counters.add("likes", "p1", 7).await.expect("counter");
    drop(old);

    let upgraded = fresh.connect(true).await.expect("upgrade");
    let status = upgraded.schema_status().await.expect("status");
    assert_up_to_date(&status);
    assert_eq!(
        upgraded
            .contacts
            .get_user(&user.user_id)
            .await
            .expect("get"),
        Some(user.clone())
    );
    assert_eq!(upgraded.counters.get("likes", "p1").await.expect("get"), 7);
    // On CQL the upgrade filled the one-partition copy of profiles and
    // preferences written before it, which the recipients read.
    let asked = [user.user_id.clone(), choice_only.user_id.clone()];
    let recipients = upgraded
        .recipients
        .recipients_many(&asked)
        .await
        .expect("recipients");
    let expected = HashMap::from([
        (
            user.user_id.clone(),
            Recipient {
                user: Some(user.clone()),
                devices: vec![device],
                preferences: vec![opted_out],
            },
        ),
        (
            choice_only.user_id.clone(),
            Recipient {
                user: None,
                devices: vec![],
                preferences: vec![choice_only],
            },
        ),
    ]);
    assert_eq!(recipients, expected);
    if let Engine::Scylla = fresh.engine {
        // A process of the previous release writes `users` alone during the
        // rollout: the copy misses it until it is filled again.
        let session = cql_session().await;
        session
            .query_unpaged(
                format!(
                    "UPDATE {}.users SET email = ? WHERE user_id = ?",
                    fresh.keyspace
                ),
                ("ada@elsewhere.example", user.user_id.as_str()),
            )
            .await
            .expect("write the previous release's way");
        let stale = upgraded
            .recipients
            .recipients_many(&asked)
            .await
            .expect("recipients");
        assert_eq!(stale, expected, "the copy does not see that write yet");
        upgraded.refill_recipients().await.expect("refill");
        let filled = upgraded
            .recipients
            .recipients_many(&asked)
            .await
            .expect("recipients");
        let email = |r: &HashMap<String, Recipient>| {
            r[&user.user_id].user.as_ref().and_then(|u| u.email.clone())
        };
        assert_eq!(email(&filled).as_deref(), Some("ada@elsewhere.example"));
        assert_eq!(
            filled[&user.user_id].preferences,
            expected[&user.user_id].preferences
        );
    }
    upgraded
        .refill_recipients()
        .await
        .expect("refill is safe again");
    assert_eq!(
        upgraded.migrate().await.expect("migrate"),
        Vec::<u32>::new()
    );
    drop(upgraded);
    fresh.finish().await;
}

/// Items the previous release held in its unscoped schedule belong to no
/// deployment: after the upgrade every scope's `due` returns them (scope
/// [`UNSCOPED`]), so the first scheduler to poll releases them, once.
async fn scheduled_items_of_the_previous_release_are_released_after_the_upgrade(fresh: Fresh) {
    fresh.create_the_previous_way().await;
    // Within the start-up sweep (`schedule_lookback`, a day by default).
    let now = now_millis();
    let held = ScheduledItem {
        scope: UNSCOPED.to_owned(),
        item_id: id("held-before-the-upgrade"),
        due_at: now - 60_000,
        payload: b"request".to_vec(),
    };
    fresh.put_the_previous_way(&held).await;

    let store = fresh.connect(true).await.expect("upgrade");
    assert_up_to_date(&store.schema_status().await.expect("status"));
    let s = &store.schedule;
    let (prod, staging) = ("prod", "staging");
    let own = ScheduledItem {
        scope: prod.to_owned(),
        item_id: id("held-after-the-upgrade"),
        due_at: now - 30_000,
        payload: b"own".to_vec(),
    };
    s.put(&own).await.expect("put");
    assert_eq!(
        s.due(prod, now, 10).await.expect("due"),
        vec![held.clone(), own.clone()],
        "the legacy item first: it is older"
    );
    assert_eq!(
        s.due(staging, now, 10).await.expect("due"),
        vec![held.clone()],
        "whichever deployment polls first may release a legacy item"
    );
    s.remove(&held.scope, &held.item_id, held.due_at)
        .await
        .expect("remove");
    assert_eq!(s.due(prod, now, 10).await.expect("due"), vec![own.clone()]);
    assert!(s.due(staging, now, 10).await.expect("due").is_empty());

    if let Engine::Scylla = fresh.engine {
        // A process of the previous release, still running during a rolling
        // upgrade, keeps writing the legacy table: still released.
        let late = ScheduledItem {
            item_id: id("put-by-an-old-process"),
            due_at: now - 10_000,
            ..held.clone()
        };
        fresh.put_the_previous_way(&late).await;
        assert_eq!(
            s.due(staging, now, 10).await.expect("due"),
            vec![late.clone()]
        );
        s.remove(&late.scope, &late.item_id, late.due_at)
            .await
            .expect("remove");
        assert!(s.due(staging, now, 10).await.expect("due").is_empty());
    }
    s.remove(prod, &own.item_id, own.due_at)
        .await
        .expect("remove");
    assert!(s.due(prod, now, 10).await.expect("due").is_empty());
    drop(store);
    fresh.finish().await;
}

async fn a_store_migrated_by_a_newer_build_is_refused(fresh: Fresh) {
    let store = fresh.connect(true).await.expect("create");
    let known = store.schema_status().await.expect("status").known_version();
    drop(store);
    let future = i32::try_from(known).expect("small") + 1;
    fresh.record_version(future).await;

    for migrate in [true, false] {
        let err = fresh
            .connect(migrate)
            .await
            .expect_err("a newer schema must be refused");
        match &err {
            StoreError::SchemaTooNew {
                store_version,
                known_version,
                ..
            } => assert_eq!(
                (*store_version, *known_version),
                (known + 1, known),
                "{err}"
            ),
            other => panic!("migrate={migrate}: expected SchemaTooNew, got {other}"),
        }
        let message = err.to_string();
        assert!(
            message.contains(&format!("schema version {}", known + 1))
                && message.contains("newer release"),
            "{message}"
        );
        assert!(!err.is_retriable());
    }
    let status = schema_status(&fresh.url, &StoreOptions::default())
        .await
        .expect("status still reads");
    assert_eq!(status.unknown.len(), 1, "{status}");
    assert!(
        status.to_string().contains("newer than this build"),
        "{status}"
    );
    fresh.finish().await;
}

// ---------------------------------------------------------------- engine-specific

#[tokio::test]
async fn unreachable_cassandra_fails_fast_naming_the_address() {
    let opts = StoreOptions {
        connect_timeout: Duration::from_secs(1),
        ..StoreOptions::default()
    };
    let started = Instant::now();
    // Port 1 on loopback: nothing listens there.
    let err = Store::connect("scylla://127.0.0.1:1/tidings", &opts)
        .await
        .expect_err("nothing listens");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let message = err.to_string();
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(err.is_retriable());
}

#[tokio::test]
async fn bad_urls_are_rejected_naming_the_url() {
    for url in [
        "mysql://db/tidings",
        "scylla://host/not-a-keyspace",
        "sqlite://",
    ] {
        let err = Store::connect(url, &StoreOptions::default())
            .await
            .expect_err(url);
        assert!(matches!(err, StoreError::InvalidUrl { .. }), "{err}");
        assert!(err.to_string().contains(url), "{err}");
    }
}

#[tokio::test]
async fn sqlite_data_survives_reopening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!(
        "sqlite://{}",
        dir.path().join("nested/dir/tidings.db").display()
    );
    let store = Store::connect(&url, &StoreOptions::default())
        .await
        .unwrap();
    store.counters.add("likes", "p1", 7).await.unwrap();
    drop(store);
    let reopened = Store::connect(&url, &StoreOptions::default())
        .await
        .unwrap();
    assert_eq!(reopened.counters.get("likes", "p1").await.unwrap(), 7);
}
