//! Signed JWTs (JWS compact form) for the providers that authenticate with
//! them: ES256 for APNs provider tokens, RS256 for the Google OAuth2 JWT
//! bearer grant that FCM's access tokens come from.
//!
//! Signed with ring, which is already linked for TLS: the `jsonwebtoken`
//! crate's current major offers only aws-lc-rs (kept out of this build) or
//! the RustCrypto stack (a second set of RSA/EC implementations), and a JWS
//! is two base64url segments and one signature.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, RSA_PKCS1_SHA256, RsaKeyPair},
};
use rustls::pki_types::{PrivateKeyDer, pem::PemObject};
use serde::Serialize;

/// A private key that signs JWTs with one algorithm.
pub(crate) struct JwtSigner {
    key: Key,
    rng: SystemRandom,
}

enum Key {
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
}

impl JwtSigner {
    /// A P-256 key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), the form of
    /// Apple's `.p8` files.
    pub(crate) fn es256_from_pem(pem: &[u8]) -> Result<Self, String> {
        let rng = SystemRandom::new();
        let key = match PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| format!("not a PEM private key: {e}"))?
        {
            PrivateKeyDer::Pkcs8(der) => EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                der.secret_pkcs8_der(),
                &rng,
            )
            .map_err(|e| format!("not a P-256 PKCS#8 key with its public key ({e})"))?,
            _ => {
                return Err("expected a PKCS#8 key (BEGIN PRIVATE KEY); convert with \
                            `openssl pkcs8 -topk8 -nocrypt -in key.pem`"
                    .into());
            }
        };
        Ok(Self {
            key: Key::Es256(key),
            rng,
        })
    }

    /// A P-256 key given as its private scalar and uncompressed public point
    /// (VAPID keys are often handed around as a bare base64url scalar; the
    /// caller derives the point).
    pub(crate) fn es256_from_parts(private: &[u8], public: &[u8]) -> Result<Self, String> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_private_key_and_public_key(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            private,
            public,
            &rng,
        )
        .map_err(|e| format!("not a P-256 key pair ({e})"))?;
        Ok(Self {
            key: Key::Es256(key),
            rng,
        })
    }

    /// An RSA key in PKCS#8 PEM (Google service accounts) or PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`).
    pub(crate) fn rs256_from_pem(pem: &[u8]) -> Result<Self, String> {
        let key = match PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| format!("not a PEM private key: {e}"))?
        {
            PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
            _ => return Err("expected an RSA private key".into()),
        }
        .map_err(|e| format!("not a usable RSA key ({e})"))?;
        Ok(Self {
            key: Key::Rs256(key),
            rng: SystemRandom::new(),
        })
    }

    fn alg(&self) -> &'static str {
        match self.key {
            Key::Es256(_) => "ES256",
            Key::Rs256(_) => "RS256",
        }
    }

    /// `header.claims.signature`; `alg` and `typ` are added to the header.
    pub(crate) fn sign(
        &self,
        kid: Option<&str>,
        claims: &impl Serialize,
    ) -> Result<String, String> {
        let mut header = serde_json::json!({ "alg": self.alg(), "typ": "JWT" });
        if let Some(kid) = kid {
            header["kid"] = kid.into();
        }
        let header = serde_json::to_vec(&header).map_err(|e| format!("JWT header: {e}"))?;
        let claims = serde_json::to_vec(claims).map_err(|e| format!("JWT claims: {e}"))?;
        let mut jwt = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        // ES256 in JWS is r||s (fixed 64 bytes), which is ring's FIXED form.
        let signature = match &self.key {
            Key::Es256(k) => k
                .sign(&self.rng, jwt.as_bytes())
                .map_err(|e| format!("ES256 signing failed: {e}"))?
                .as_ref()
                .to_vec(),
            Key::Rs256(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &self.rng, jwt.as_bytes(), &mut sig)
                    .map_err(|e| format!("RS256 signing failed: {e}"))?;
                sig
            }
        };
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(jwt)
    }
}

/// Seconds since the Unix epoch, for `iat` and `exp`.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use ring::signature::{ECDSA_P256_SHA256_FIXED, KeyPair, UnparsedPublicKey};

    use super::*;

    fn pem(label: &str, der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn es256_tokens_verify_with_the_public_key() {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("keygen");
        let public =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                .expect("parse")
                .public_key()
                .as_ref()
                .to_vec();
        let signer = JwtSigner::es256_from_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes())
            .expect("PEM parses");
        let jwt = signer
            .sign(
                Some("KEY123"),
                &serde_json::json!({ "iss": "TEAM", "iat": 1 }),
            )
            .expect("signs");
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("b64")).expect("json");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], "KEY123");
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).expect("b64");
        assert_eq!(sig.len(), 64);
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &public)
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .expect("signature verifies");
    }

    #[test]
    fn bad_keys_are_explained() {
        assert!(JwtSigner::es256_from_pem(b"not pem").is_err());
        let err = JwtSigner::es256_from_pem(pem("EC PRIVATE KEY", b"x").as_bytes())
            .err()
            .unwrap_or_default();
        assert!(err.contains("PKCS#8"), "{err}");
        assert!(JwtSigner::rs256_from_pem(pem("PRIVATE KEY", b"garbage").as_bytes()).is_err());
    }
}
