//! Web push: one POST per message to the browser subscription's endpoint
//! (RFC 8030), the payload encrypted to the subscriber's keys (RFC 8291,
//! `aes128gcm` content coding of RFC 8188) and the request signed with our
//! VAPID key (RFC 8292).
//!
//! The device token of a `web` device is the subscription itself
//! ([`WebSubscription`]): endpoint, `p256dh` and `auth`.
//!
//! The crypto is maintained primitives (ECDH on P-256 from the RustCrypto
//! `p256` crate; HKDF-SHA-256, AES-128-GCM and ES256 from ring); this file
//! only composes them as RFC 8291 section 3.4 prescribes, which the unit
//! test checks against the RFC's worked example (Appendix A). The wire
//! tests (`tests/webpush.rs`) decrypt with an independent implementation
//! (Python's `http_ece`).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use p256::{PublicKey, SecretKey, elliptic_curve::sec1::ToEncodedPoint, pkcs8::DecodePrivateKey};
use ring::{
    aead, digest, hkdf,
    rand::{SecureRandom, SystemRandom},
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tidings_schemas::{
    records::{Delivery, Priority},
    web_push::{WebSubscription, decode_b64url},
};

use super::{
    Provider, ProviderError, Receipt,
    http::{self, HttpSettings, Protocol},
    jwt::{JwtSigner, unix_now},
    setup::{Limiter, Secret, SendLimits, SetupError},
};

const NAME: &str = "webpush";
/// The setting a refused VAPID signature points at.
const KEY_SETTING: &str = "providers.web.vapid_private_key";
/// Push services must accept a 4096-byte body (RFC 8030 section 7.2);
/// larger ones may be refused with 413, so we do not send them.
const MAX_BODY: usize = 4096;
/// The record size we declare: one record holds the whole message.
const RECORD_SIZE: u32 = 4096;
/// Salt (16), record size (4), key id length (1), key id (65).
const HEADER_LEN: usize = 16 + 4 + 1 + 65;
/// VAPID JWTs are signed for 12 hours (RFC 8292 allows at most 24) and
/// reused for one, so a push service never sees one close to expiring.
const JWT_LIFETIME_SECS: u64 = 12 * 60 * 60;
const JWT_REUSE: Duration = Duration::from_secs(60 * 60);
/// One JWT per push-service origin; there are a handful of those (FCM,
/// Mozilla, Apple, Microsoft), so the cap is only against odd endpoints.
const MAX_CACHED_ORIGINS: usize = 256;

/// Who we are to push services and how long they should keep a message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebPushConfig {
    /// The VAPID private key: PEM (`BEGIN PRIVATE KEY` or `BEGIN EC PRIVATE
    /// KEY`) or the raw 32-byte scalar in base64url, as web-push libraries
    /// print it. Set this or `vapid_private_key_path`.
    #[serde(default)]
    pub vapid_private_key: Option<Secret>,
    #[serde(default)]
    pub vapid_private_key_path: Option<PathBuf>,
    /// A `mailto:` or `https:` contact for the push service's operators
    /// (the JWT's `sub`).
    pub subject: String,
    /// How long the push service keeps an undelivered message (the `TTL`
    /// header), unless the notification expires sooner.
    #[serde(default = "WebPushConfig::default_ttl_secs")]
    pub ttl_secs: u64,
    /// The `Urgency` of normal-priority notifications; high-priority ones
    /// are always sent `high`.
    #[serde(default)]
    pub urgency: Urgency,
    /// Take `http://` endpoints on loopback addresses (a local push-service
    /// stand-in). Real push services are https.
    #[serde(default)]
    pub allow_loopback_http: bool,
    #[serde(default)]
    pub http: HttpSettings,
    #[serde(default = "WebPushConfig::default_limits")]
    pub limits: SendLimits,
}

impl WebPushConfig {
    fn default_ttl_secs() -> u64 {
        24 * 60 * 60
    }
    fn default_limits() -> SendLimits {
        SendLimits::new(64)
    }
}

/// RFC 8030 section 5.3: how soon the browser should be woken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Urgency {
    VeryLow,
    Low,
    #[default]
    Normal,
    High,
}

impl Urgency {
    fn as_str(self) -> &'static str {
        match self {
            Urgency::VeryLow => "very-low",
            Urgency::Low => "low",
            Urgency::Normal => "normal",
            Urgency::High => "high",
        }
    }
}

pub struct WebPushProvider {
    client: reqwest::Client,
    signer: JwtSigner,
    /// Our public key, base64url (the `k` of the Authorization header).
    public_key: String,
    subject: String,
    ttl_secs: u64,
    urgency: Urgency,
    allow_loopback_http: bool,
    /// Signed JWTs by audience (the endpoint's origin).
    jwts: Mutex<HashMap<String, (String, Instant)>>,
    rng: SystemRandom,
    limiter: Limiter,
}

impl WebPushProvider {
    pub fn new(config: WebPushConfig) -> Result<Self, SetupError> {
        let text = match (&config.vapid_private_key, &config.vapid_private_key_path) {
            (Some(key), None) => key.expose().to_owned(),
            (None, Some(path)) => {
                String::from_utf8(SetupError::read(NAME, "vapid_private_key_path", path)?).map_err(
                    |_| SetupError::new(NAME, "`vapid_private_key_path` is not a text file"),
                )?
            }
            _ => {
                return Err(SetupError::new(
                    NAME,
                    "set exactly one of `vapid_private_key` and `vapid_private_key_path`",
                ));
            }
        };
        let secret = vapid_key(&text)
            .map_err(|e| SetupError::new(NAME, format!("`vapid_private_key`: {e}")))?;
        let public = secret.public_key().to_encoded_point(false);
        let signer = JwtSigner::es256_from_parts(&secret.to_bytes(), public.as_bytes())
            .map_err(|e| SetupError::new(NAME, format!("`vapid_private_key`: {e}")))?;
        let subject = config.subject.trim();
        if !(subject.starts_with("mailto:") || subject.starts_with("https://")) {
            return Err(SetupError::new(
                NAME,
                "`subject` must be a mailto: or https: contact (RFC 8292)",
            ));
        }
        if config.ttl_secs > u64::from(u32::MAX) {
            return Err(SetupError::new(NAME, "`ttl_secs` is too large"));
        }
        Ok(Self {
            client: http::build_client(NAME, &config.http, Protocol::Negotiated)?,
            signer,
            public_key: URL_SAFE_NO_PAD.encode(public.as_bytes()),
            subject: subject.to_owned(),
            ttl_secs: config.ttl_secs,
            urgency: config.urgency,
            allow_loopback_http: config.allow_loopback_http,
            jwts: Mutex::new(HashMap::new()),
            rng: SystemRandom::new(),
            limiter: Limiter::new(NAME, &config.limits)?,
        })
    }

    /// `vapid t=<jwt>, k=<public key>` for the endpoint's origin, reusing a
    /// JWT signed within the hour.
    fn authorization(&self, audience: &str) -> Result<String, ProviderError> {
        let mut jwts = self.jwts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((jwt, _)) = jwts
            .get(audience)
            .filter(|(_, signed)| signed.elapsed() < JWT_REUSE)
        {
            return Ok(format!("vapid t={jwt}, k={}", self.public_key));
        }
        let claims = json!({
            "aud": audience,
            "exp": unix_now() + JWT_LIFETIME_SECS,
            "sub": self.subject,
        });
        let jwt = self
            .signer
            .sign(None, &claims)
            .map_err(|e| ProviderError::Transient {
                reason: format!("{NAME}: VAPID JWT: {e}"),
                retry_after: None,
            })?;
        if jwts.len() >= MAX_CACHED_ORIGINS {
            jwts.clear();
        }
        jwts.insert(audience.to_owned(), (jwt.clone(), Instant::now()));
        Ok(format!("vapid t={jwt}, k={}", self.public_key))
    }

    /// The `TTL` header: the configured time, or less if the notification
    /// expires sooner.
    fn ttl(&self, d: &Delivery) -> u64 {
        match d.expires_at {
            Some(at) => {
                let left = (at - tidings_kafka::now_millis()).max(0) / 1000;
                self.ttl_secs.min(u64::try_from(left).unwrap_or_default())
            }
            None => self.ttl_secs,
        }
    }

    /// Encrypts `plaintext` to the subscriber with a fresh key and salt.
    fn encrypt(
        &self,
        plaintext: &[u8],
        ua_public: &PublicKey,
        auth: &[u8],
    ) -> Result<Vec<u8>, ProviderError> {
        let failed = |what: &str| ProviderError::Transient {
            reason: format!("{NAME}: {what}"),
            retry_after: None,
        };
        let mut salt = [0u8; 16];
        self.rng
            .fill(&mut salt)
            .map_err(|_| failed("no randomness for the salt"))?;
        // A random 32-byte string is a valid scalar except with probability
        // about 2^-32; try again in that case.
        let mut ephemeral = None;
        for _ in 0..4 {
            let mut bytes = [0u8; 32];
            self.rng
                .fill(&mut bytes)
                .map_err(|_| failed("no randomness for the key"))?;
            if let Ok(k) = SecretKey::from_slice(&bytes) {
                ephemeral = Some(k);
                break;
            }
        }
        let ephemeral = ephemeral.ok_or_else(|| failed("could not draw a P-256 key"))?;
        encrypt(plaintext, ua_public, auth, &ephemeral, &salt)
            .map_err(|e| ProviderError::Rejected(format!("{NAME}: {e}")))
    }

    fn subscription(
        &self,
        d: &Delivery,
    ) -> Result<(WebSubscription, PublicKey, Vec<u8>), ProviderError> {
        let invalid = |e: String| {
            ProviderError::InvalidTarget(format!(
                "{NAME}: subscription {}: {e}",
                http::short(&d.target)
            ))
        };
        let sub = WebSubscription::from_token(&d.target, self.allow_loopback_http)
            .map_err(|e| invalid(e.to_string()))?;
        let ua_public = decode_b64url(&sub.p256dh)
            .and_then(|k| PublicKey::from_sec1_bytes(&k).ok())
            .ok_or_else(|| invalid("p256dh is not a point on P-256".into()))?;
        let auth = decode_b64url(&sub.auth).unwrap_or_default();
        Ok((sub, ua_public, auth))
    }
}

/// Reads a VAPID key: PKCS#8 or SEC1 PEM, or a base64url scalar.
fn vapid_key(text: &str) -> Result<SecretKey, String> {
    let text = text.trim();
    if text.starts_with("-----BEGIN PRIVATE KEY-----") {
        SecretKey::from_pkcs8_pem(text).map_err(|e| format!("not a P-256 PKCS#8 key: {e}"))
    } else if text.starts_with("-----BEGIN EC PRIVATE KEY-----") {
        SecretKey::from_sec1_pem(text).map_err(|e| format!("not a P-256 SEC1 key: {e}"))
    } else {
        let bytes =
            decode_b64url(text).ok_or("neither PEM nor a base64url private key (32 bytes)")?;
        if bytes.len() != 32 {
            return Err(format!(
                "a base64url private key is 32 bytes; this one is {}",
                bytes.len()
            ));
        }
        SecretKey::from_slice(&bytes).map_err(|_| "not a P-256 private scalar".into())
    }
}

/// RFC 8291 section 3.4 over RFC 8188's `aes128gcm`, as one record:
/// `salt | rs | idlen | as_public | AES-128-GCM(plaintext | 0x02)`.
pub(crate) fn encrypt(
    plaintext: &[u8],
    ua_public: &PublicKey,
    auth: &[u8],
    as_secret: &SecretKey,
    salt: &[u8; 16],
) -> Result<Vec<u8>, String> {
    let max = MAX_BODY - HEADER_LEN - 16 - 1;
    if plaintext.len() > max {
        return Err(format!(
            "the message is {} bytes; web push carries at most {max}",
            plaintext.len()
        ));
    }
    let ua_public_bytes = ua_public.to_encoded_point(false);
    let as_public = as_secret.public_key().to_encoded_point(false);
    let shared = p256::ecdh::diffie_hellman(as_secret.to_nonzero_scalar(), ua_public.as_affine());
    // IKM = HKDF(auth, ecdh_secret, "WebPush: info" 0x00 ua_public as_public, 32)
    let mut ikm = [0u8; 32];
    hkdf_sha256(
        auth,
        shared.raw_secret_bytes(),
        &[
            b"WebPush: info\0",
            ua_public_bytes.as_bytes(),
            as_public.as_bytes(),
        ],
        &mut ikm,
    )?;
    let mut cek = [0u8; 16];
    hkdf_sha256(salt, &ikm, &[b"Content-Encoding: aes128gcm\0"], &mut cek)?;
    let mut nonce = [0u8; 12];
    hkdf_sha256(salt, &ikm, &[b"Content-Encoding: nonce\0"], &mut nonce)?;

    let key = aead::UnboundKey::new(&aead::AES_128_GCM, &cek)
        .map_err(|_| "AES-128-GCM key setup failed")?;
    let mut record = Vec::with_capacity(plaintext.len() + 17);
    record.extend_from_slice(plaintext);
    // The last (and only) record's delimiter, no padding.
    record.push(0x02);
    aead::LessSafeKey::new(key)
        .seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::empty(),
            &mut record,
        )
        .map_err(|_| "AES-128-GCM sealing failed")?;

    let mut body = Vec::with_capacity(HEADER_LEN + record.len());
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(65);
    body.extend_from_slice(as_public.as_bytes());
    body.extend_from_slice(&record);
    Ok(body)
}

/// ring's HKDF wants the output length as a type.
struct OutLen(usize);

impl hkdf::KeyType for OutLen {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[&[u8]], out: &mut [u8]) -> Result<(), String> {
    hkdf::Salt::new(hkdf::HKDF_SHA256, salt)
        .extract(ikm)
        .expand(info, OutLen(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| "HKDF output too long".into())
}

/// The endpoint's origin, the JWT audience (RFC 8292 section 2).
fn origin(endpoint: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(endpoint).map_err(|e| e.to_string())?;
    Ok(url.origin().ascii_serialization())
}

/// The `Topic` header: the collapse id when it fits RFC 8030's 32
/// URL-safe base64 characters, else a digest of it (the same id always
/// gives the same topic, which is all a topic has to do).
fn topic(collapse_id: &str) -> String {
    let fits = (1..=32).contains(&collapse_id.len())
        && collapse_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if fits {
        return collapse_id.to_owned();
    }
    let hash = digest::digest(&digest::SHA256, collapse_id.as_bytes());
    let mut t = URL_SAFE_NO_PAD.encode(hash.as_ref());
    t.truncate(32);
    t
}

/// What the service worker receives: `{"notification_id", "title", "body",
/// "data"}` as JSON.
fn payload(d: &Delivery) -> Result<Vec<u8>, ProviderError> {
    if d.title.is_none() && d.body.is_none() {
        return Err(ProviderError::Rejected(format!(
            "{NAME}: delivery {} has neither title nor body to show",
            d.delivery_id
        )));
    }
    let mut root = Map::new();
    root.insert("notification_id".into(), d.notification_id.clone().into());
    if let Some(t) = &d.title {
        root.insert("title".into(), t.clone().into());
    }
    if let Some(b) = &d.body {
        root.insert("body".into(), b.clone().into());
    }
    let data: Map<String, Value> = d
        .data
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    root.insert("data".into(), data.into());
    serde_json::to_vec(&root).map_err(|e| ProviderError::Rejected(format!("{NAME}: payload: {e}")))
}

#[async_trait::async_trait]
impl Provider for WebPushProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn deliver(&self, d: &Delivery) -> Result<Receipt, ProviderError> {
        let (sub, ua_public, auth) = self.subscription(d)?;
        let audience = origin(&sub.endpoint).map_err(|e| {
            ProviderError::InvalidTarget(format!(
                "{NAME}: endpoint {}: {e}",
                http::short(&sub.endpoint)
            ))
        })?;
        let body = self.encrypt(&payload(d)?, &ua_public, &auth)?;
        let _slot = self.limiter.acquire().await?;
        let authorization = self.authorization(&audience)?;
        let urgency = if d.priority == Priority::High {
            Urgency::High
        } else {
            self.urgency
        };
        let mut req = self
            .client
            .post(&sub.endpoint)
            .header(reqwest::header::AUTHORIZATION, authorization)
            .header("TTL", self.ttl(d).to_string())
            .header("Urgency", urgency.as_str())
            .header(reqwest::header::CONTENT_ENCODING, "aes128gcm")
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        if let Some(c) = &d.collapse_id {
            req = req.header("Topic", topic(c));
        }
        let resp = req.send().await.map_err(|e| http::send_failed(NAME, &e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        if status.is_success() {
            // The push message resource (RFC 8030 section 5).
            let location = headers
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            return Ok(Receipt {
                provider_id: location.or_else(|| Some(d.delivery_id.clone())),
            });
        }
        let text = http::body_text(resp).await;
        let endpoint = http::short(&sub.endpoint);
        Err(match status.as_u16() {
            404 | 410 => ProviderError::InvalidTarget(format!(
                "{NAME}: subscription {endpoint} is gone ({status}: {text})"
            )),
            401 | 403 => ProviderError::Misconfigured {
                setting: KEY_SETTING,
                reason: format!("{NAME}: {status} from {audience}: {text}"),
            },
            429 | 500..=599 => http::transient_status(NAME, status, &headers, &text),
            _ => ProviderError::Rejected(format!(
                "{NAME}: {status} from {audience} for {endpoint}: {text}"
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).expect("base64url")
    }

    /// RFC 8291 Appendix A: the same keys, salt and plaintext give the
    /// RFC's message byte for byte.
    #[test]
    fn encrypts_rfc_8291_worked_example() {
        let as_secret = SecretKey::from_slice(&b64("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"))
            .expect("scalar");
        assert_eq!(
            URL_SAFE_NO_PAD.encode(as_secret.public_key().to_encoded_point(false).as_bytes()),
            "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8"
        );
        let ua_public = PublicKey::from_sec1_bytes(&b64(
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
        ))
        .expect("point");
        let salt: [u8; 16] = b64("DGv6ra1nlYgDCS1FRnbzlw").try_into().expect("16 bytes");
        let body = encrypt(
            b"When I grow up, I want to be a watermelon",
            &ua_public,
            &b64("BTBZMqHH6r4Tts7J_aSIgg"),
            &as_secret,
            &salt,
        )
        .expect("encrypts");
        assert_eq!(
            URL_SAFE_NO_PAD.encode(body),
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
        );
    }

    #[test]
    fn vapid_keys_as_scalar_or_pem() {
        let scalar = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";
        let key = vapid_key(scalar).expect("scalar");
        let pem = key
            .to_sec1_pem(Default::default())
            .expect("pem")
            .to_string();
        assert_eq!(vapid_key(&pem).expect("sec1"), key);
        assert!(vapid_key("abc").unwrap_err().contains("32 bytes"));
        assert!(vapid_key("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----").is_err());
    }

    #[test]
    fn topics_fit_rfc_8030() {
        assert_eq!(topic("score-update_1"), "score-update_1");
        let long = topic("a collapse id with spaces that is far too long");
        assert_eq!(long.len(), 32);
        assert_eq!(
            long,
            topic("a collapse id with spaces that is far too long")
        );
        assert_eq!(
            origin("https://push.example:8443/a/b?c").as_deref(),
            Ok("https://push.example:8443")
        );
    }

    #[test]
    fn oversized_messages_are_refused_before_sending() {
        let k = SecretKey::from_slice(&[7u8; 32]).expect("scalar");
        let err = encrypt(&[b'x'; 4000], &k.public_key(), &[0; 16], &k, &[0; 16]).unwrap_err();
        assert!(err.contains("at most 3993"), "{err}");
        assert!(
            encrypt(&[b'x'; 3993], &k.public_key(), &[0; 16], &k, &[0; 16])
                .is_ok_and(|b| b.len() == MAX_BODY)
        );
    }
}
