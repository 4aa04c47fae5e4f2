//! A Twilio-compatible Messages API: form-encoded `POST
//! /2010-04-01/Accounts/<sid>/Messages.json` with basic auth, 201 with the
//! message resource, and Twilio's error bodies (`{"code", "message",
//! "more_info", "status"}`).

use axum::http::Method;
use base64::Engine;
use serde_json::json;

use super::{Recorded, Reply, Shared};

pub const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const AUTH_TOKEN: &str = "twilio-test-auth-token";
pub const FROM: &str = "+15005550006";

pub struct Twilio;

pub fn error(status: u16, code: u32, message: &str) -> Reply {
    Reply::json(
        status,
        json!({ "code": code, "message": message, "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status }),
    )
}

fn authorized(r: &Recorded) -> bool {
    let expected =
        base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT_SID}:{AUTH_TOKEN}"));
    r.header("authorization")
        .and_then(|a| a.strip_prefix("Basic "))
        == Some(expected.as_str())
}

pub fn handle(r: &Recorded, _: &Twilio, shared: &Shared) -> Reply {
    let Some(sid) = r
        .path
        .strip_prefix("/2010-04-01/Accounts/")
        .and_then(|p| p.strip_suffix("/Messages.json"))
    else {
        return error(404, 20404, "The requested resource was not found");
    };
    if !authorized(r) || sid != ACCOUNT_SID {
        return error(401, 20003, "Authenticate");
    }
    if r.method != Method::POST {
        return error(405, 20004, "Method not allowed");
    }
    if !r.content_type_is("application/x-www-form-urlencoded") {
        return error(400, 20001, "Invalid content type");
    }
    let form = r.form();
    let Some(to) = form.get("To") else {
        return error(400, 21604, "A 'To' phone number is required.");
    };
    if !form.contains_key("From") && !form.contains_key("MessagingServiceSid") {
        return error(
            400,
            21603,
            "A 'From' or 'MessagingServiceSid' parameter is required to send a message.",
        );
    }
    let Some(body) = form.get("Body").filter(|b| !b.is_empty()) else {
        return error(400, 21602, "Message body is required.");
    };
    if let Some(cb) = form.get("StatusCallback") {
        let absolute = cb.starts_with("https://") || cb.starts_with("http://");
        if !absolute || cb.contains(char::is_whitespace) {
            return error(400, 21609, &format!("Invalid StatusCallback url: {cb}"));
        }
    }
    let e164 = to
        .strip_prefix('+')
        .is_some_and(|d| (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()));
    if !e164 {
        return error(400, 21211, &format!("Invalid 'To' Phone Number: {to}"));
    }
    if let Some(scripted) = shared.next_scripted() {
        return scripted;
    }
    let sid = format!("SM{}", uuid::Uuid::new_v4().simple());
    Reply::json(
        201,
        json!({
            "sid": sid, "account_sid": ACCOUNT_SID, "to": to, "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"), "body": body,
            "status": "queued", "num_segments": "1", "direction": "outbound-api",
            "uri": format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json"),
        }),
    )
}
