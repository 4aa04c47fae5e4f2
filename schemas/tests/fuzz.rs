//! Bad input beyond the API: whatever bytes arrive on a topic, and whatever
//! string arrives as a tracking or receipt token, decoding answers `Ok` or
//! `Err`, never panics, and takes bounded time and memory. A record that
//! cannot be decoded goes to the dead-letter topic (the stage runner's
//! job); here we check that deciding so is safe.
//!
//! Property tests with proptest; case counts are kept small so the file runs
//! in seconds. A failing case is shrunk and printed by proptest, and
//! persisted under `proptest-regressions/` to be replayed first.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tidings_schemas::{
    AvroCodec, AvroRecord, CATALOG,
    records::{
        DeadLetter, Delivery, FanoutBatch, FollowChanged, FollowKind, NotificationRequest,
        PostPublished, PostReaction, PostRevised, Priority, RawContent, ReactionKind, RevisionKind,
        TemplateRef, TrackingEvent, TrackingKind,
    },
    tracking_link::{DeliveryRef, LinkSigner, TrackedTarget, with_receipt_token},
};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Shrinking a decoder panic needs few steps; keep failures fast.
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

/// One valid record of every type, encoded: the seeds mutations start from.
fn valid_payloads() -> Vec<Vec<u8>> {
    let codec = AvroCodec::local();
    let data: BTreeMap<String, String> = [("k".to_owned(), "v".repeat(20))].into();
    let request = NotificationRequest {
        notification_id: "0193e1c2-0000-7000-8000-000000000001".into(),
        event_id: "order-42".into(),
        app_key: "app".into(),
        user_id: "u-1".into(),
        channels: vec!["email".into(), "sms".into()],
        category: Some("orders".into()),
        template: Some(TemplateRef {
            name: "shipped".into(),
            version: Some(3),
            params: data.clone(),
        }),
        content: Some(RawContent {
            title: Some("Hi".into()),
            body: Some("there".into()),
            ..RawContent::default()
        }),
        send_at: Some(1_700_000_000_000),
        expires_at: None,
        priority: Priority::High,
        collapse_id: Some("c".into()),
        data: data.clone(),
        accepted_at: 1_700_000_000_000,
    };
    let delivery = Delivery {
        delivery_id: "d-1".into(),
        notification_id: "n-1".into(),
        event_id: "e-1".into(),
        user_id: "u-1".into(),
        channel: "sms".into(),
        target: "+14155550100".into(),
        category: None,
        template_name: Some("shipped".into()),
        template_version: Some(1),
        locale: Some("fr".into()),
        title: None,
        body: Some("Votre colis".into()),
        email_subject: None,
        email_html: None,
        email_text: None,
        data,
        collapse_id: None,
        priority: Priority::Normal,
        expires_at: Some(1_800_000_000_000),
        accepted_at: 1_700_000_000_000,
        attempt: 2,
        not_before: Some(1_700_000_030_000),
        last_error: Some("503".into()),
        action_url: None,
        avatar_url: None,
    };
    let dead = DeadLetter {
        source_topic: "tidings.deliver.sms".into(),
        source_partition: 2,
        source_offset: 17,
        key: Some(b"u-1".to_vec()),
        payload: codec.encode(&delivery).expect("encode"),
        stage: "sender.sms".into(),
        reason: "rejected".into(),
        retriable: false,
        attempts: 1,
        failed_at: 1_700_000_000_000,
    };
    let event = TrackingEvent {
        event_id: "e".into(),
        notification_id: "n".into(),
        user_id: "u".into(),
        kind: TrackingKind::Clicked,
        channel: Some("email".into()),
        target: None,
        template_name: Some("t".into()),
        stage: "gateway".into(),
        detail: Some("https://example.com".into()),
        at: 1,
        dispatched_at: None,
    };
    let post = PostPublished {
        post_id: "p".into(),
        author_id: "a".into(),
        body: "hello".into(),
        media_urls: vec!["https://cdn.example.com/a.jpg".into()],
        audience: Some(vec!["b".into(), "c".into()]),
        created_at: 1,
    };
    let fanout = FanoutBatch {
        post_id: "p".into(),
        author_id: "a".into(),
        created_at: 1,
        recipients: (0..20).map(|i| format!("u-{i}")).collect(),
        batch_index: 4,
    };
    let reaction = PostReaction {
        post_id: "p".into(),
        post_author_id: "a".into(),
        user_id: "b".into(),
        kind: ReactionKind::Reply,
        reply_id: Some("r".into()),
        reply_body: Some("nice".into()),
        at: 1,
    };
    vec![
        codec.encode(&request).expect("encode"),
        codec.encode(&delivery).expect("encode"),
        codec.encode(&dead).expect("encode"),
        codec.encode(&event).expect("encode"),
        codec.encode(&post).expect("encode"),
        codec.encode(&fanout).expect("encode"),
        codec.encode(&reaction).expect("encode"),
        codec
            .encode(&PostRevised {
                post_id: "p".into(),
                author_id: "a".into(),
                post_created_at: 1,
                kind: RevisionKind::Deleted,
                at: 2,
            })
            .expect("encode"),
        codec
            .encode(&FollowChanged {
                follower_id: "b".into(),
                followee_id: "a".into(),
                kind: FollowKind::Unfollowed,
                at: 2,
            })
            .expect("encode"),
    ]
}

/// Decodes `bytes` as every record type; each answer is `Ok` or `Err`.
fn decode_as_every_type(codec: &AvroCodec, bytes: &[u8]) {
    fn one<T: AvroRecord>(codec: &AvroCodec, bytes: &[u8]) {
        let _ = codec.decode::<T>(bytes);
    }
    one::<NotificationRequest>(codec, bytes);
    one::<Delivery>(codec, bytes);
    one::<DeadLetter>(codec, bytes);
    one::<TrackingEvent>(codec, bytes);
    one::<PostPublished>(codec, bytes);
    one::<FanoutBatch>(codec, bytes);
    one::<PostReaction>(codec, bytes);
    one::<PostRevised>(codec, bytes);
    one::<FollowChanged>(codec, bytes);
}

/// A mutation of a valid payload: what a torn write, a bit flip or a
/// producer with another schema might leave.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bits: u8 },
    Set { at: usize, byte: u8 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Remove { at: usize, len: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, bits)| Mutation::Flip { at, bits }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1..8usize).prop_map(|(at, len)| Mutation::Remove { at, len }),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let n = bytes.len().max(1);
        match m {
            Mutation::Flip { at, bits } => {
                if let Some(b) = bytes.get_mut(at % n) {
                    *b ^= bits;
                }
            }
            Mutation::Set { at, byte } => {
                if let Some(b) = bytes.get_mut(at % n) {
                    *b = *byte;
                }
            }
            Mutation::Truncate { at } => bytes.truncate(at % n),
            Mutation::Insert { at, bytes: extra } => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, extra.iter().copied());
            }
            Mutation::Remove { at, len } => {
                let at = at % n;
                let end = (at + len).min(bytes.len());
                if at < end {
                    bytes.drain(at..end);
                }
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(config(512))]

    /// Any bytes at all.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        decode_as_every_type(&AvroCodec::local(), &bytes);
    }

    /// Any body behind a header naming each schema of the catalog (and
    /// ids it does not have), so the Avro decoder itself sees the garbage.
    #[test]
    fn arbitrary_bodies_under_every_schema_id_never_panic(
        id in prop_oneof![1..=CATALOG.len() as u32 + 1, any::<u32>()],
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&id.to_be_bytes());
        bytes.extend_from_slice(&body);
        decode_as_every_type(&AvroCodec::local(), &bytes);
    }

    /// Valid records of every type, mutated.
    #[test]
    fn mutated_valid_records_never_panic(
        seed in 0..6usize,
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let payload = valid_payloads().swap_remove(seed);
        decode_as_every_type(&AvroCodec::local(), &mutate(payload, &mutations));
    }
}

/// The process's peak resident memory so far (Linux), in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A datum that claims a huge string or array in a few bytes must fail
/// without allocating what it claims: otherwise one small poison record
/// costs a consumer hundreds of megabytes.
#[test]
fn huge_claimed_lengths_fail_without_allocating_them() {
    let codec = AvroCodec::local();
    let before = peak_rss();
    for id in 1..=CATALOG.len() as u32 {
        for claimed in [1i64 << 62, 400 << 20, 100 << 20] {
            // Header, then the zigzag varint of the first field's length
            // (every record here starts with a string).
            let mut bytes = vec![0];
            bytes.extend_from_slice(&id.to_be_bytes());
            let mut n = ((claimed << 1) ^ (claimed >> 63)) as u64;
            while n >= 0x80 {
                bytes.push((n as u8) | 0x80);
                n >>= 7;
            }
            bytes.push(n as u8);
            bytes.extend_from_slice(b"short");
            let started = std::time::Instant::now();
            decode_as_every_type(&codec, &bytes);
            assert!(
                started.elapsed() < std::time::Duration::from_secs(2),
                "schema id {id}, {claimed} bytes claimed: {:?}",
                started.elapsed()
            );
        }
    }
    if let (Some(before), Some(after)) = (before, peak_rss()) {
        assert!(
            after.saturating_sub(before) < 64 << 20,
            "decoding records that claim huge lengths raised the peak RSS by {} MiB",
            (after - before) >> 20
        );
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9._~-]{0,40}",
        // Token-shaped: base64url, a dot, base64url.
        "[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,60}",
    ]
}

fn target() -> impl Strategy<Value = TrackedTarget> {
    (
        any::<String>(),
        any::<String>(),
        proptest::option::of(any::<String>()),
        proptest::option::of(any::<String>()),
        proptest::option::of(any::<String>()),
    )
        .prop_map(
            |(notification_id, user_id, template_name, channel, url)| TrackedTarget {
                notification_id,
                user_id,
                template_name,
                channel,
                url,
            },
        )
}

proptest! {
    #![proptest_config(config(512))]

    /// Tracking and receipt tokens from the wild: refused or accepted,
    /// never a panic; a forged one is never accepted.
    #[test]
    fn arbitrary_tracking_tokens_never_panic(token in text()) {
        let signer = LinkSigner::new("s3cret", "https://t.example.com/");
        prop_assert!(signer.verify(&token).is_err());
        prop_assert!(signer.verify_receipt(&token).is_err());
        let _ = with_receipt_token(&token, &token);
    }

    /// Whatever the target holds, its token verifies to it, under its own
    /// key only, and one altered character breaks it.
    #[test]
    fn tokens_round_trip_and_resist_tampering(target in target(), at in any::<usize>()) {
        let signer = LinkSigner::new("s3cret", "https://t.example.com");
        let token = signer.token(&target);
        prop_assert_eq!(signer.verify(&token), Ok(target.clone()));
        prop_assert!(LinkSigner::new("other", "").verify(&token).is_err());
        let receipt = DeliveryRef {
            notification_id: target.notification_id.clone(),
            user_id: target.user_id.clone(),
            template_name: target.template_name.clone(),
            channel: target.channel.clone().unwrap_or_default(),
            target: target.url.clone().unwrap_or_default(),
        };
        let receipt_token = signer.receipt_token(&receipt);
        prop_assert!(signer.verify(&receipt_token).is_err(), "a receipt token is no link token");
        prop_assert_eq!(signer.verify_receipt(&receipt_token), Ok(receipt));
        let mut bytes = token.into_bytes();
        let i = at % bytes.len();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).expect("tokens are ASCII");
        prop_assert!(signer.verify(&altered).is_err(), "{altered}");
    }
}
