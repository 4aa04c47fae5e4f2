//! Input validation: every rejection names the field, so a caller can fix
//! the request without reading our code.
//!
//! Every refusal that blames a field is made by [`field_error`]: the message
//! starts with the field path (`items[3].user_ids[1]: ...`) for people and
//! logs, and `grpc-status-details-bin` carries the same path and problem as
//! a `google.rpc.BadRequest` field violation for programs (a form can put
//! the problem beside its input). The HTTP API answers the same violations
//! in its JSON error body ([`field_violations`]).

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Longest id (user, event, ...) we accept; ids are Kafka keys and CQL keys.
pub const MAX_ID_LEN: usize = 128;

/// INVALID_ARGUMENT blaming `field`.
pub fn invalid(field: impl std::fmt::Display, problem: impl std::fmt::Display) -> Status {
    field_error(Code::InvalidArgument, field, problem)
}

/// A status with `code` blaming `field`: the one place a field error is
/// made, so each carries its `google.rpc.BadRequest` violation.
pub fn field_error(
    code: Code,
    field: impl std::fmt::Display,
    problem: impl std::fmt::Display,
) -> Status {
    let (field, problem) = (field.to_string(), problem.to_string());
    Status::with_error_details(
        code,
        format!("{field}: {problem}"),
        ErrorDetails::with_bad_request_violation(field, problem),
    )
}

/// The `(field, description)` pairs of `status`'s `google.rpc.BadRequest`
/// details; empty when it has none.
pub fn field_violations(status: &Status) -> Vec<(String, String)> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| {
            b.field_violations
                .iter()
                .map(|v| (v.field.clone(), v.description.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// A non-empty id of printable ASCII without spaces.
pub fn id(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(invalid(field, "is required"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(invalid(field, format!("is longer than {MAX_ID_LEN} bytes")));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            field,
            "may only contain printable ASCII without spaces",
        ));
    }
    Ok(())
}

/// E.164: `+`, then 8 to 15 digits, the first not 0.
pub fn e164(field: &str, value: &str) -> Result<(), Status> {
    let digits = value
        .strip_prefix('+')
        .ok_or_else(|| invalid(field, "must be E.164, starting with +"))?;
    let ok = (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("`{value}` is not an E.164 number like +14155550100"),
        ))
    }
}

/// Email syntax as deliverable addresses use it: one `@`, a non-empty local
/// part, a domain with a dot and no empty labels. Not RFC 5322 in full (quoted
/// local parts and IP-literal domains are refused on purpose).
pub fn email(field: &str, value: &str) -> Result<(), Status> {
    let bad = || invalid(field, format!("`{value}` is not an email address"));
    if value.len() > 254 || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let (local, domain) = value.rsplit_once('@').ok_or_else(bad)?;
    if local.is_empty()
        || local.len() > 64
        || local.contains('@')
        || local.starts_with('.')
        || local.ends_with('.')
    {
        return Err(bad());
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_alphanumeric() || c == '-')
    };
    if labels.len() < 2 || !labels.iter().all(label_ok) {
        return Err(bad());
    }
    Ok(())
}

/// Device token formats: APNs tokens are 32 bytes as 64 hex digits; FCM
/// registration tokens are long URL-safe strings; web push is a subscription
/// endpoint URL.
pub fn device_token(field: &str, platform: &str, token: &str) -> Result<(), Status> {
    match platform {
        "ios" => {
            if token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(())
            } else {
                Err(invalid(
                    field,
                    "an APNs device token is 64 hexadecimal digits",
                ))
            }
        }
        "android" => {
            let ok = (32..=4096).contains(&token.len())
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_:.".contains(&b));
            if ok {
                Ok(())
            } else {
                Err(invalid(
                    field,
                    "an FCM registration token is 32 to 4096 URL-safe characters",
                ))
            }
        }
        "web" => {
            if token.starts_with("https://") && token.len() <= 2048 {
                Ok(())
            } else {
                Err(invalid(
                    field,
                    "a web push token is the subscription's https:// endpoint",
                ))
            }
        }
        other => Err(invalid(field, format!("unknown platform `{other}`"))),
    }
}

/// An absolute http(s) URL without spaces (media on a CDN, avatars).
pub fn http_url(field: &str, value: &str) -> Result<(), Status> {
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
        .ok_or_else(|| invalid(field, "must be an http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(invalid(field, "has no host"));
    }
    if value.len() > 2048 {
        return Err(invalid(field, "is longer than 2048 bytes"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(field, "contains spaces or control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers() {
        assert!(e164("phone", "+14155550100").is_ok());
        assert!(e164("phone", "+447911123456").is_ok());
        for bad in [
            "14155550100",
            "+0123456789",
            "+1415",
            "+1415555010012345",
            "+1415-555-0100",
            "",
        ] {
            let err = e164("phone", bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().starts_with("phone:"), "{}", err.message());
        }
    }

    #[test]
    fn email_addresses() {
        for ok in [
            "a@example.com",
            "first.last+tag@mail.example.co.uk",
            "ü@bücher.de",
        ] {
            assert!(email("email", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a",
            "a@",
            "@example.com",
            "a@example",
            "a b@example.com",
            "a@-x.com",
            "a@x..com",
            ".a@x.com",
        ] {
            assert!(email("email", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_per_platform() {
        assert!(device_token("token", "ios", &"ab".repeat(32)).is_ok());
        assert!(device_token("token", "ios", "abc").is_err());
        assert!(device_token("token", "ios", &"zz".repeat(32)).is_err());
        assert!(
            device_token(
                "token",
                "android",
                &format!("{}:APA91b{}", "c".repeat(11), "x_-".repeat(40))
            )
            .is_ok()
        );
        assert!(device_token("token", "android", "short").is_err());
        assert!(device_token("token", "web", "https://fcm.googleapis.com/fcm/send/abc").is_ok());
        assert!(device_token("token", "web", "http://insecure").is_err());
    }

    #[test]
    fn http_urls_need_a_scheme_and_a_host() {
        assert!(http_url("m", "https://cdn.example.com/a.jpg").is_ok());
        for bad in [
            "cdn.example.com/a.jpg",
            "https://",
            "https:///x",
            "https://a b",
            "ftp://x",
        ] {
            let err = http_url("media_urls[0]", bad).unwrap_err();
            assert!(
                err.message().starts_with("media_urls[0]:"),
                "{bad}: {}",
                err.message()
            );
        }
    }

    #[test]
    fn field_errors_carry_bad_request_details() {
        let err = invalid("items[1].raw.body", "is too long");
        assert_eq!(err.message(), "items[1].raw.body: is too long");
        assert_eq!(
            field_violations(&err),
            [("items[1].raw.body".to_owned(), "is too long".to_owned())]
        );
        let err = field_error(Code::FailedPrecondition, "user_id", "too many");
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert_eq!(field_violations(&err)[0].0, "user_id");
        assert!(field_violations(&Status::internal("no field")).is_empty());
    }

    #[test]
    fn ids() {
        assert!(id("user_id", "u-1").is_ok());
        assert_eq!(
            id("user_id", "").unwrap_err().message(),
            "user_id: is required"
        );
        assert!(id("user_id", "has space").is_err());
        assert!(id("user_id", &"x".repeat(129)).is_err());
    }
}
