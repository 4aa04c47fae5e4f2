//! An FCM HTTP v1 server and the Google OAuth2 token endpoint a service
//! account uses: `POST /token` (JWT bearer grant, RS256 assertion checked
//! against the account's public key) and `POST
//! /v1/projects/<p>/messages:send` with Google's error bodies.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::http::Method;
use ring::signature::{KeyPair, RSA_PKCS1_2048_8192_SHA256, RsaKeyPair, UnparsedPublicKey};
use rustls::pki_types::{PrivatePkcs8KeyDer, pem::PemObject};
use serde_json::{Value, json};

use super::{Recorded, Reply, Shared, jwt_parts, unix_now};

pub const PROJECT: &str = "tidings-test";
pub const CLIENT_EMAIL: &str = "fcm-sender@tidings-test.iam.gserviceaccount.com";
/// A 2048-bit RSA key made with `openssl genpkey` for these tests only.
pub const PRIVATE_KEY_PEM: &str = include_str!("fcm-test-key.pem");

/// The service-account JSON as the Firebase console hands it out, with
/// `token_uri` pointing at the fake.
pub fn service_account(token_uri: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "0123456789abcdef",
        "private_key": PRIVATE_KEY_PEM,
        "client_email": CLIENT_EMAIL,
        "client_id": "1234567890",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    })
    .to_string()
}

pub struct Fcm {
    pub token_uri: String,
    public_key: Vec<u8>,
    /// Access tokens handed out and not revoked.
    valid: Mutex<HashSet<String>>,
    pub tokens_issued: AtomicUsize,
    /// Registration tokens of uninstalled apps (404 UNREGISTERED).
    pub unregistered: Mutex<HashSet<String>>,
}

impl Fcm {
    pub fn new(addr: SocketAddr) -> Self {
        let der = PrivatePkcs8KeyDer::from_pem_slice(PRIVATE_KEY_PEM.as_bytes())
            .expect("test key is PKCS#8 PEM");
        let pair = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).expect("test key is RSA");
        Self {
            token_uri: format!("http://{addr}/token"),
            public_key: pair.public_key().as_ref().to_vec(),
            valid: Mutex::default(),
            tokens_issued: AtomicUsize::new(0),
            unregistered: Mutex::default(),
        }
    }

    /// Google revokes every access token issued so far.
    pub fn revoke_all(&self) {
        self.valid.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub fn issued(&self) -> usize {
        self.tokens_issued.load(Ordering::SeqCst)
    }

    fn grant(&self, r: &Recorded) -> Reply {
        let bad = |why: &str| {
            Reply::json(
                400,
                json!({ "error": "invalid_grant", "error_description": why }),
            )
        };
        if r.method != Method::POST || !r.content_type_is("application/x-www-form-urlencoded") {
            return Reply::json(400, json!({ "error": "invalid_request" }));
        }
        let form = r.form();
        if form.get("grant_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
        {
            return Reply::json(400, json!({ "error": "unsupported_grant_type" }));
        }
        let Some((header, claims, sig, signed)) = form.get("assertion").and_then(|a| jwt_parts(a))
        else {
            return bad("Invalid JWT");
        };
        if header["alg"] != "RS256" {
            return bad("Invalid JWT: alg");
        }
        if UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &self.public_key)
            .verify(signed.as_bytes(), &sig)
            .is_err()
        {
            return bad("Invalid JWT Signature.");
        }
        let (iat, exp) = (
            claims["iat"].as_u64().unwrap_or(0),
            claims["exp"].as_u64().unwrap_or(0),
        );
        if claims["iss"] != CLIENT_EMAIL
            || claims["aud"] != self.token_uri.as_str()
            || claims["scope"] != "https://www.googleapis.com/auth/firebase.messaging"
            || exp <= unix_now()
            || exp.saturating_sub(iat) > 3600
        {
            return bad("Invalid JWT: claims");
        }
        let n = self.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("ya29.fake-access-token-{n}");
        self.valid
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.clone());
        Reply::json(
            200,
            json!({ "access_token": token, "expires_in": 3599, "token_type": "Bearer" }),
        )
    }
}

/// Google's error shape, with an `FcmError` detail when FCM has a code.
pub fn google_error(code: u16, status: &str, message: &str, fcm_code: Option<&str>) -> Reply {
    let details: Vec<Value> = fcm_code
        .map(|c| json!({ "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": c }))
        .into_iter()
        .collect();
    Reply::json(
        code,
        json!({ "error": { "code": code, "message": message, "status": status, "details": details } }),
    )
}

pub fn handle(r: &Recorded, s: &Fcm, shared: &Shared) -> Reply {
    if r.path == "/token" {
        return s.grant(r);
    }
    let Some(project) = r
        .path
        .strip_prefix("/v1/projects/")
        .and_then(|p| p.strip_suffix("/messages:send"))
    else {
        return google_error(404, "NOT_FOUND", "Requested entity was not found.", None);
    };
    if r.method != Method::POST {
        return google_error(405, "METHOD_NOT_ALLOWED", "Method not allowed", None);
    }
    let authed = r.bearer().is_some_and(|t| {
        s.valid
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(t)
    });
    if !authed {
        return google_error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token.",
            None,
        );
    }
    if project != PROJECT {
        return google_error(
            403,
            "PERMISSION_DENIED",
            "Permission 'cloudmessaging.messages.create' denied",
            None,
        );
    }
    if !r.content_type_is("application/json") {
        return google_error(
            400,
            "INVALID_ARGUMENT",
            "Invalid JSON payload received.",
            None,
        );
    }
    let Some(body) = r.json() else {
        return google_error(
            400,
            "INVALID_ARGUMENT",
            "Invalid JSON payload received.",
            None,
        );
    };
    let Some(token) = body["message"]["token"].as_str() else {
        return google_error(
            400,
            "INVALID_ARGUMENT",
            "Recipient of the message is not set.",
            Some("INVALID_ARGUMENT"),
        );
    };
    if token.len() < 8 {
        return google_error(
            400,
            "INVALID_ARGUMENT",
            "The registration token is not a valid FCM registration token",
            Some("INVALID_ARGUMENT"),
        );
    }
    if body["message"]["data"]
        .as_object()
        .is_some_and(|d| d.values().any(|v| !v.is_string()))
    {
        return google_error(
            400,
            "INVALID_ARGUMENT",
            "Invalid value at 'message.data'",
            Some("INVALID_ARGUMENT"),
        );
    }
    if s.unregistered
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(token)
    {
        return google_error(
            404,
            "NOT_FOUND",
            "Requested entity was not found.",
            Some("UNREGISTERED"),
        );
    }
    if let Some(scripted) = shared.next_scripted() {
        return scripted;
    }
    Reply::json(
        200,
        json!({ "name": format!("projects/{PROJECT}/messages/0:{}", uuid::Uuid::new_v4().simple()) }),
    )
}
