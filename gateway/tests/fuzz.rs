//! Bad input beyond the API, at the gateway: feed cursors, user tokens,
//! the providers' webhook bodies and the receipt tokens in their queries
//! come from outside. Whatever arrives, decoding answers `Ok` or `Err`,
//! never panics, and an answer is never granted to a forgery.
//!
//! Property tests with proptest; case counts are kept small so the file runs
//! in seconds.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use proptest::prelude::*;
use tidings_gateway::{
    feed::Cursor,
    user_token::UserTokens,
    webhooks::{
        SendGridSignatures, TwilioSignatures, decode_sendgrid, decode_twilio, receipt_token,
    },
};

const SECRET: &str = "s3cret";
const NOW: i64 = 1_780_000_000;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Strings of the shapes that reach each decoder, and anything at all.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_-]{0,80}",
        "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,40}",
        "[a-zA-Z0-9%&=+.-]{0,80}",
    ]
}

/// A token signed with the gateway's secret over any header and claims:
/// what a company auth service with a bug (or a hostile insider) could mint.
fn signed(header: &str, claims: &str) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// JSON claims with odd values in every field the verifier reads (times
/// inside the range where adding the verifier's leeway cannot overflow).
fn claims() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        Just("null".to_owned()),
        (-1_000_000_000_000i64..1_000_000_000_000).prop_map(|n| n.to_string()),
        Just("1e400".to_owned()),
        Just("-0.5".to_owned()),
        Just("\"soon\"".to_owned()),
    ];
    (any::<String>(), number.clone(), number).prop_map(|(sub, exp, nbf)| {
        format!(
            "{{\"sub\":{},\"exp\":{exp},\"nbf\":{nbf}}}",
            serde_json::Value::String(sub)
        )
    })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_cursors_never_panic(raw in text()) {
        let _ = Cursor::decode(&raw);
        let _ = Cursor::decode(&URL_SAFE_NO_PAD.encode(raw.as_bytes()));
        let _ = Cursor::decode(&URL_SAFE_NO_PAD.encode(format!("v1:{raw}")));
    }

    #[test]
    fn cursors_round_trip(at in any::<i64>(), post_id in ".{1,40}") {
        let cursor = Cursor { at, post_id };
        prop_assert_eq!(Cursor::decode(&cursor.encode()).ok().flatten(), Some(cursor));
    }

    /// Anything as a bearer token: refused, never a panic.
    #[test]
    fn arbitrary_user_tokens_are_refused(token in text()) {
        prop_assert!(UserTokens::new(SECRET).verify(&token, NOW).is_err());
    }

    /// Signed tokens with odd claims: a user id or a reason, never a panic.
    #[test]
    fn signed_tokens_with_odd_claims_never_panic(
        claims in claims(),
        header in prop_oneof![
            Just(r#"{"alg":"HS256","typ":"JWT"}"#.to_owned()),
            Just(r#"{"alg":"none"}"#.to_owned()),
            any::<String>(),
        ],
    ) {
        let _ = UserTokens::new(SECRET).verify(&signed(&header, &claims), NOW);
    }

    #[test]
    fn minted_tokens_verify_to_their_user(user in ".{1,60}", ttl in 1u64..1_000_000) {
        let tokens = UserTokens::new(SECRET);
        let token = tokens.mint(&user, NOW, Duration::from_secs(ttl));
        prop_assert_eq!(tokens.verify(&token, NOW), Ok(user));
        prop_assert!(UserTokens::new("other").verify(&token, NOW).is_err());
    }

    /// Twilio's form, SendGrid's JSON, the callback's query: any bytes.
    #[test]
    fn arbitrary_webhook_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..512), query in text()) {
        let _ = decode_twilio(&body);
        let _ = decode_sendgrid(&body);
        let _ = receipt_token(Some(&query));
    }

    /// Bodies close to the real ones: forms with Twilio's fields, and JSON
    /// arrays whose events hold values of every JSON type.
    #[test]
    fn webhook_shaped_bodies_never_panic(
        fields in prop::collection::vec(
            (prop_oneof![
                Just("MessageStatus".to_owned()),
                Just("ErrorCode".to_owned()),
                Just("MessageSid".to_owned()),
                any::<String>(),
            ], any::<String>()),
            0..6,
        ),
        events in prop::collection::vec(json_value(), 0..6),
    ) {
        let form = serde_urlencoded::to_string(&fields).unwrap_or_default();
        if let Ok(status) = decode_twilio(form.as_bytes()) {
            // Whatever was accepted has a status.
            let status = format!("{status:?}");
            prop_assert!(status.contains("message_status: Some"), "{}", status);
        }
        let body = serde_json::Value::Array(events).to_string();
        let decoded = decode_sendgrid(body.as_bytes());
        prop_assert!(decoded.is_ok(), "a JSON array is read event by event");
    }

    /// The providers' keys, as an operator might paste them.
    #[test]
    fn arbitrary_webhook_keys_never_panic(key in text(), url in text()) {
        let _ = SendGridSignatures::new(&key);
        let _ = TwilioSignatures::new(&key, &url);
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>().prop_map(|n| serde_json::json!(n)),
        any::<String>().prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("event".to_owned()),
                    Just("tidings_receipt".to_owned()),
                    Just("timestamp".to_owned()),
                    Just("status".to_owned()),
                    Just("reason".to_owned()),
                    Just("sg_message_id".to_owned()),
                    any::<String>(),
                ],
                inner,
                0..6,
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Times at the edge of `i64` in a token signed with the right secret: the
/// verifier adds and subtracts its leeway of 60 s to `exp` and `nbf`.
#[test]
fn signed_tokens_with_extreme_times_do_not_panic() {
    let tokens = UserTokens::new(SECRET);
    for (claims, valid) in [
        (format!(r#"{{"sub":"u","exp":{}}}"#, i64::MAX), true),
        (
            format!(r#"{{"sub":"u","exp":{},"nbf":{}}}"#, NOW + 600, i64::MIN),
            true,
        ),
        (format!(r#"{{"sub":"u","exp":{}}}"#, i64::MIN), false),
        (
            format!(r#"{{"sub":"u","exp":{},"nbf":{}}}"#, i64::MAX, i64::MAX),
            false,
        ),
    ] {
        let token = signed(r#"{"alg":"HS256"}"#, &claims);
        let outcome = std::panic::catch_unwind(|| tokens.verify(&token, NOW));
        let Ok(answer) = outcome else {
            panic!("verify panicked on claims {claims}");
        };
        // Saturating keeps the meaning: a far future expiry is valid, an
        // expiry or not-before at the far edge is honoured.
        assert_eq!(answer.is_ok(), valid, "claims {claims}: {answer:?}");
    }
}
