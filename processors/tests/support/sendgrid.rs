//! A SendGrid v3 Mail Send server: `POST /v3/mail/send` with a Bearer API
//! key and a JSON mail, 202 with `X-Message-Id`, and SendGrid's error body
//! (`{"errors": [{"message", "field", "help"}]}`).

use axum::http::Method;
use serde_json::{Value, json};

use super::{Recorded, Reply, Shared};

pub const API_KEY: &str = "SG.test-key.abcdefghijklmnop";
pub const FROM: &str = "notifications@example.com";

pub struct SendGrid;

pub fn error(status: u16, message: &str, field: Option<&str>) -> Reply {
    Reply::json(
        status,
        json!({ "errors": [{ "message": message, "field": field, "help": null }] }),
    )
}

fn valid_address(a: &str) -> bool {
    match a.split_once('@') {
        Some((local, domain)) => !local.is_empty() && domain.contains('.') && !domain.contains('@'),
        None => false,
    }
}

pub fn handle(r: &Recorded, _: &SendGrid, shared: &Shared) -> Reply {
    if r.path != "/v3/mail/send" {
        return error(404, "Not found", None);
    }
    if r.method != Method::POST {
        return error(405, "Method not allowed", None);
    }
    if r.bearer() != Some(API_KEY) {
        return error(
            401,
            "The provided authorization grant is invalid, expired, or revoked",
            None,
        );
    }
    if !r.content_type_is("application/json") {
        return error(415, "Content-Type should be application/json.", None);
    }
    let Some(mail) = r.json() else {
        return error(400, "Bad Request", None);
    };
    let Some(to) = mail["personalizations"][0]["to"][0]["email"].as_str() else {
        return error(
            400,
            "The personalizations field is required and must have at least one personalization.",
            Some("personalizations"),
        );
    };
    // custom_args: string values only, at most 10,000 bytes in all.
    let custom_args = &mail["personalizations"][0]["custom_args"];
    if !custom_args.is_null() {
        let all_strings = custom_args
            .as_object()
            .is_some_and(|m| m.values().all(Value::is_string));
        if !all_strings || custom_args.to_string().len() > 10_000 {
            return error(
                400,
                "custom_args must be an object of strings, at most 10,000 bytes",
                Some("personalizations.0.custom_args"),
            );
        }
    }
    if !valid_address(to) {
        return error(
            400,
            "Does not contain a valid address.",
            Some("personalizations.0.to.0.email"),
        );
    }
    if !mail["from"]["email"].as_str().is_some_and(valid_address) {
        return error(
            400,
            "The from object must be provided for every email send.",
            Some("from"),
        );
    }
    if mail["subject"].as_str().is_none_or(str::is_empty) {
        return error(400, "The subject is required.", Some("subject"));
    }
    let content = mail["content"].as_array().cloned().unwrap_or_default();
    if content.is_empty()
        || content
            .iter()
            .any(|c| c["value"].as_str().is_none_or(str::is_empty))
    {
        return error(
            400,
            "The content value must be a string at least one character in length.",
            Some("content.0.value"),
        );
    }
    let types: Vec<&str> = content
        .iter()
        .filter_map(|c: &Value| c["type"].as_str())
        .collect();
    if types.contains(&"text/plain") && types.first() != Some(&"text/plain") {
        return error(
            400,
            "If present, text/plain must be first, followed by any other content.",
            Some("content"),
        );
    }
    if let Some(scripted) = shared.next_scripted() {
        return scripted;
    }
    Reply::empty(202).header(
        "X-Message-Id",
        format!("sg-{}", uuid::Uuid::new_v4().simple()),
    )
}
