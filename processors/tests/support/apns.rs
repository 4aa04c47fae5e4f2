//! An APNs-compatible server: `POST /3/device/<token>` over HTTP/2, ES256
//! provider tokens checked against the team's public key, and Apple's error
//! answers (`{"reason": ...}`, 410 with a timestamp).

use std::{collections::HashSet, sync::Mutex};

use axum::http::{Method, Version};
use ring::{
    rand::SystemRandom,
    signature::{
        ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
        UnparsedPublicKey,
    },
};
use serde_json::json;

use super::{Recorded, Reply, Shared, jwt_parts, pem, unix_now};

pub const TEAM_ID: &str = "TEAM123456";
pub const KEY_ID: &str = "KEY7654321";
pub const TOPIC: &str = "com.example.tidings";

/// A fresh P-256 signing key, as Apple hands out in a `.p8` file, and its
/// public half for the server.
pub fn signing_key() -> (String, Vec<u8>) {
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("P-256 keygen");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .expect("parse own key");
    (
        pem("PRIVATE KEY", pkcs8.as_ref()),
        pair.public_key().as_ref().to_vec(),
    )
}

pub struct Apns {
    pub public_key: Vec<u8>,
    /// Tokens APNs has seen uninstalled (410 Unregistered).
    pub unregistered: Mutex<HashSet<String>>,
}

impl Apns {
    pub fn new(public_key: Vec<u8>) -> Self {
        Self {
            public_key,
            unregistered: Mutex::default(),
        }
    }

    fn check_token(&self, r: &Recorded) -> Result<(), &'static str> {
        let jwt = r.bearer().ok_or("MissingProviderToken")?;
        let (header, claims, sig, signed) = jwt_parts(jwt).ok_or("InvalidProviderToken")?;
        if header["alg"] != "ES256" || header["kid"] != KEY_ID || claims["iss"] != TEAM_ID {
            return Err("InvalidProviderToken");
        }
        let iat = claims["iat"].as_u64().ok_or("InvalidProviderToken")?;
        if iat + 3600 < unix_now() {
            return Err("ExpiredProviderToken");
        }
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public_key)
            .verify(signed.as_bytes(), &sig)
            .map_err(|_| "InvalidProviderToken")
    }
}

fn reason(status: u16, reason: &str) -> Reply {
    Reply::json(status, json!({ "reason": reason }))
}

pub fn handle(r: &Recorded, s: &Apns, shared: &Shared) -> Reply {
    if r.version != Version::HTTP_2 {
        // Apple's servers speak nothing but HTTP/2.
        return reason(505, "HTTP2Required");
    }
    if r.method != Method::POST {
        return reason(405, "MethodNotAllowed");
    }
    let Some(token) = r.path.strip_prefix("/3/device/") else {
        return reason(404, "BadPath");
    };
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return reason(400, "BadDeviceToken");
    }
    if let Err(why) = s.check_token(r) {
        return reason(403, why);
    }
    match r.header("apns-topic") {
        None => return reason(400, "MissingTopic"),
        Some(t) if t != TOPIC => return reason(400, "TopicDisallowed"),
        Some(_) => {}
    }
    if !matches!(
        r.header("apns-push-type"),
        Some("alert" | "background" | "voip" | "location")
    ) {
        return reason(400, "InvalidPushType");
    }
    if !matches!(r.header("apns-priority"), None | Some("5" | "10" | "1")) {
        return reason(400, "BadPriority");
    }
    if r.header("apns-id")
        .is_some_and(|id| uuid::Uuid::parse_str(id).is_err())
    {
        return reason(400, "BadMessageId");
    }
    if r.header("apns-expiration")
        .is_some_and(|e| e.parse::<u64>().is_err())
    {
        return reason(400, "BadExpirationDate");
    }
    if r.header("apns-collapse-id").is_some_and(|c| c.len() > 64) {
        return reason(400, "BadCollapseId");
    }
    if r.body.len() > 4096 {
        return reason(413, "PayloadTooLarge");
    }
    match r.json() {
        Some(v) if v["aps"].is_object() => {}
        _ => return reason(400, "PayloadEmpty"),
    }
    if s.unregistered
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(token)
    {
        return Reply::json(
            410,
            json!({ "reason": "Unregistered", "timestamp": unix_now() * 1000 }),
        );
    }
    if let Some(scripted) = shared.next_scripted() {
        return scripted;
    }
    let id = r
        .header("apns-id")
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string().to_uppercase());
    Reply::empty(200).header("apns-id", id)
}
