//! Size limits of what a send may carry, checked before anything is written.
//!
//! Every record tidings produces must fit `kafka.max_message_bytes`; a record
//! that does not can never be produced, however often it is retried. So the
//! gateway refuses, with INVALID_ARGUMENT naming the field, a send whose
//! fields are larger than the documented per-field limits below, or whose
//! largest rendering (the request record, or a delivery the enricher would
//! render from it) would not fit the message budget: `kafka.max_message_bytes`
//! less [`ENVELOPE_HEADROOM`] for ids, target, locale, tracking and Avro
//! framing. For a template the largest rendering is estimated per locale
//! variant by replacing every occurrence of each param with its value (HTML
//! escaped in `email_html`), so a param used four times counts four times.
//!
//! docs/configuration.md (`kafka.max_message_bytes`) lists these limits.

use std::collections::BTreeMap;

use tidings_store::{TemplateContent, TemplateVersion};
use tonic::Status;

use crate::validate::invalid;

/// Bytes of `kafka.max_message_bytes` kept for everything in a record
/// besides the caller's content: ids, the target (an FCM token is up to
/// 4 KiB), category, locale, the sender's `last_error`, Avro and Kafka
/// framing.
pub const ENVELOPE_HEADROOM: usize = 16 * 1024;

/// Push title and email subject.
pub const MAX_TITLE_BYTES: usize = 1024;
/// Push body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// SMS text (providers cap it lower: Twilio at 1,600 characters).
pub const MAX_SMS_TEXT_BYTES: usize = 4 * 1024;
/// Plain-text email body.
pub const MAX_EMAIL_TEXT_BYTES: usize = 256 * 1024;
/// HTML email body.
pub const MAX_EMAIL_HTML_BYTES: usize = 512 * 1024;
/// One template param value.
pub const MAX_PARAM_BYTES: usize = 64 * 1024;
/// All of `data`, keys and values: it rides along with every push, whose
/// providers cap whole payloads at 4 KiB.
pub const MAX_DATA_BYTES: usize = 16 * 1024;
/// `collapse_id` (APNs `apns-collapse-id` is at most 64 bytes).
pub const MAX_COLLAPSE_ID_BYTES: usize = 64;

/// A tracking link's rendering: the signed redirect URL carries the
/// destination (encoded) plus the public URL and a signature.
fn tracked_link_bytes(destination: &str) -> usize {
    2 * destination.len() + 256
}

/// The limit of a content part, by its proto field name (raw content and
/// template variants share them).
pub fn part_limit(part: &str) -> usize {
    match part {
        "title" | "push_title" | "email_subject" | "in_app_title" => MAX_TITLE_BYTES,
        "body" | "push_body" | "in_app_body" => MAX_BODY_BYTES,
        // URLs: a title's room is plenty.
        "in_app_action_url" | "in_app_avatar_url" | "action_url" | "avatar_url" => MAX_TITLE_BYTES,
        "sms_text" => MAX_SMS_TEXT_BYTES,
        "email_text" => MAX_EMAIL_TEXT_BYTES,
        _ => MAX_EMAIL_HTML_BYTES,
    }
}

/// `field` is at most `max` bytes. The field's path is formatted only for
/// an error: every notification of a batch passes here.
pub fn at_most(field: impl std::fmt::Display, value: &str, max: usize) -> Result<(), Status> {
    if value.len() > max {
        return Err(invalid(
            field,
            format!("is {} bytes; at most {max}", value.len()),
        ));
    }
    Ok(())
}

/// The largest record a notification may produce, from
/// `kafka.max_message_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct MessageBudget {
    pub max_message_bytes: usize,
}

impl MessageBudget {
    /// Content bytes one record may carry.
    pub fn content_bytes(&self) -> usize {
        self.max_message_bytes.saturating_sub(ENVELOPE_HEADROOM)
    }

    /// Refuses `total` content bytes over the budget, blaming `field`. Both
    /// texts are formatted only for an error.
    pub fn fits(
        &self,
        field: impl std::fmt::Display,
        total: usize,
        what: impl std::fmt::Display,
    ) -> Result<(), Status> {
        let max = self.content_bytes();
        if total > max {
            return Err(invalid(
                field,
                format!(
                    "{what} {total} bytes; a message may carry at most {max} (kafka.max_message_bytes {} less {ENVELOPE_HEADROOM} for the envelope)",
                    self.max_message_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// Bytes of `data`, keys and values, checked against [`MAX_DATA_BYTES`].
pub fn data_bytes(field: &str, data: &BTreeMap<String, String>) -> Result<usize, Status> {
    let total: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_DATA_BYTES {
        return Err(invalid(
            field,
            format!("is {total} bytes (keys and values); at most {MAX_DATA_BYTES}"),
        ));
    }
    Ok(total)
}

/// Checks raw content parts (`(proto field name, value)`) one by one, then
/// together with `data_bytes` against the budget, blaming the largest part.
pub fn raw(
    prefix: &str,
    parts: &[(&str, &str)],
    data_bytes: usize,
    budget: MessageBudget,
) -> Result<(), Status> {
    for (name, value) in parts {
        at_most(format_args!("{prefix}raw.{name}"), value, part_limit(name))?;
    }
    let total = data_bytes + parts.iter().map(|(_, v)| v.len()).sum::<usize>();
    let largest = parts
        .iter()
        .max_by_key(|(_, v)| v.len())
        .map_or("raw", |(n, _)| n);
    budget.fits(
        format_args!("{prefix}raw.{largest}"),
        total,
        "the content adds up to",
    )
}

/// Checks each param value's size, then all of them with `data_bytes`
/// against the budget (they travel in the request record), blaming the
/// largest.
pub fn params(
    prefix: &str,
    params: &BTreeMap<String, String>,
    data_bytes: usize,
    budget: MessageBudget,
) -> Result<(), Status> {
    for (name, value) in params {
        at_most(
            format_args!("{prefix}template.params.{name}"),
            value,
            MAX_PARAM_BYTES,
        )?;
    }
    let total = data_bytes + params.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    let (dot, largest) = match params.iter().max_by_key(|(_, v)| v.len()) {
        Some((name, _)) => (".", name.as_str()),
        None => ("", ""),
    };
    budget.fits(
        format_args!("{prefix}template.params{dot}{largest}"),
        total,
        "the params add up to",
    )
}

/// The size of one content part once rendered, and how much of it each param
/// contributes (`(param, occurrences, bytes)`).
#[derive(Debug, Default, PartialEq)]
struct Rendering {
    bytes: usize,
    by_param: BTreeMap<String, (usize, usize)>,
}

/// The rendered size of `text`, placeholders replaced as the enricher's
/// renderer does (processors/src/enricher/render.rs). Unclosed braces count
/// as text: templates are checked when they are put.
fn rendered(
    text: &str,
    params: &BTreeMap<String, String>,
    links: &BTreeMap<String, String>,
    html: bool,
    into: &mut Rendering,
) {
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        into.bytes += start;
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            rest = &rest[start..];
            break;
        };
        let name = after[..end].trim();
        let value_bytes = match name.strip_prefix("link.") {
            Some(link) => links.get(link).map_or(0, |d| tracked_link_bytes(d)),
            None => {
                let value = params.get(name).map_or("", String::as_str);
                let bytes = if html {
                    escaped_len(value)
                } else {
                    value.len()
                };
                let e = into.by_param.entry(name.to_owned()).or_default();
                e.0 += 1;
                e.1 += bytes;
                bytes
            }
        };
        into.bytes += value_bytes;
        rest = &after[end + 2..];
    }
    into.bytes += rest.len();
}

/// The length of `value` HTML-escaped as the renderer escapes params.
fn escaped_len(value: &str) -> usize {
    value
        .bytes()
        .map(|b| match b {
            b'&' | b'\'' => 5,
            b'<' | b'>' => 4,
            b'"' => 6,
            _ => 1,
        })
        .sum()
}

fn variant_rendering(c: &TemplateContent, params: &BTreeMap<String, String>) -> Rendering {
    let mut r = Rendering::default();
    let parts = [
        (&c.push_title, false),
        (&c.push_body, false),
        (&c.sms_text, false),
        (&c.email_subject, false),
        (&c.email_html, true),
        (&c.email_text, false),
        (&c.in_app_title, false),
        (&c.in_app_body, false),
        (&c.in_app_action_url, false),
        (&c.in_app_avatar_url, false),
    ];
    for (part, html) in parts {
        if let Some(text) = part {
            rendered(text, params, &c.tracking_links, html, &mut r);
        }
    }
    r
}

/// Refuses params that would render `template` (any locale variant: every
/// part one delivery may carry, summed) with `data_bytes` of data over the
/// budget, naming the param that contributes most.
pub fn rendered_template(
    prefix: &str,
    template: &TemplateVersion,
    params: &BTreeMap<String, String>,
    data_bytes: usize,
    budget: MessageBudget,
) -> Result<(), Status> {
    let Some((locale, largest)) = template
        .variants
        .iter()
        .map(|(locale, c)| (locale, variant_rendering(c, params)))
        .max_by_key(|(_, r)| r.bytes)
    else {
        return Ok(());
    };
    let total = largest.bytes + data_bytes;
    match largest.by_param.iter().max_by_key(|(_, (_, bytes))| *bytes) {
        Some((param, (times, _))) => budget.fits(
            format_args!("{prefix}template.params.{param}"),
            total,
            format_args!(
                "appears {times} times in template `{}` version {}; its `{locale}` variant would render to",
                template.name, template.version
            ),
        ),
        None => budget.fits(
            format_args!("{prefix}template.name"),
            total,
            format_args!(
                "template `{}` version {}: its `{locale}` variant renders to",
                template.name, template.version
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: MessageBudget = MessageBudget {
        max_message_bytes: 1_000_000,
    };

    fn template(email_html: &str) -> TemplateVersion {
        TemplateVersion {
            name: "poison".into(),
            version: 3,
            category: None,
            params: vec!["name".into(), "small".into()],
            default_locale: "en".into(),
            variants: [(
                "en".to_owned(),
                TemplateContent {
                    email_subject: Some("Hi {{small}}".into()),
                    email_html: Some(email_html.into()),
                    ..Default::default()
                },
            )]
            .into(),
            created_at: 0,
        }
    }

    fn params(name: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("name".to_owned(), name.to_owned()),
            ("small".to_owned(), "x".to_owned()),
        ])
    }

    #[test]
    fn each_occurrence_of_a_param_counts() {
        let t = template("<p>{{name}}</p>{{name}}{{ name }}{{name}}");
        let value = "a".repeat(60_000);
        // Under the per-param limit, once.
        assert!(super::params("", &params(&value), 0, BUDGET).is_ok());
        // Four times: 240 kB.
        assert!(rendered_template("", &t, &params(&value), 0, BUDGET).is_ok());
        // Twenty times: 1.2 MB, which no record can carry.
        let t = template(&"{{name}}".repeat(20));
        let err = rendered_template("items[3].", &t, &params(&value), 0, BUDGET).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message()
                .starts_with("items[3].template.params.name: appears 20 times"),
            "{}",
            err.message()
        );
        assert!(err.message().contains("1200"), "{}", err.message());
    }

    #[test]
    fn html_escaping_grows_params_in_email_html() {
        let t = template("{{name}}");
        let quotes = "\"".repeat(60_000);
        let mut r = Rendering::default();
        rendered("{{name}}", &params(&quotes), &BTreeMap::new(), true, &mut r);
        assert_eq!(r.bytes, 360_000);
        let t20 = template(&"{{name}}".repeat(3));
        assert!(rendered_template("", &t, &params(&quotes), 0, BUDGET).is_ok());
        assert!(rendered_template("", &t20, &params(&quotes), 0, BUDGET).is_err());
    }

    #[test]
    fn rendering_counts_text_params_and_links() {
        let mut r = Rendering::default();
        let links = BTreeMap::from([("go".to_owned(), "https://x/y".to_owned())]);
        rendered(
            "ab {{name}} cd {{link.go}}",
            &params("12345"),
            &links,
            false,
            &mut r,
        );
        assert_eq!(
            r.bytes,
            "ab ".len() + 5 + " cd ".len() + tracked_link_bytes("https://x/y")
        );
        assert_eq!(r.by_param["name"], (1, 5));
    }

    #[test]
    fn the_largest_param_and_the_sum_of_params_are_bounded() {
        let big = "a".repeat(MAX_PARAM_BYTES + 1);
        let err = super::params("", &params(&big), 0, BUDGET).unwrap_err();
        assert!(
            err.message()
                .starts_with("template.params.name: is 65537 bytes"),
            "{}",
            err.message()
        );
        let many: BTreeMap<String, String> = (0..20)
            .map(|i| (format!("p{i}"), "a".repeat(MAX_PARAM_BYTES - i)))
            .collect();
        let err = super::params("", &many, 0, BUDGET).unwrap_err();
        assert!(
            err.message()
                .starts_with("template.params.p0: the params add up to"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn raw_parts_are_bounded_one_by_one_and_together() {
        let body = "b".repeat(1 << 20);
        let err = raw("", &[("title", "t"), ("body", &body)], 0, BUDGET).unwrap_err();
        assert_eq!(
            err.message(),
            format!("raw.body: is {} bytes; at most {MAX_BODY_BYTES}", 1 << 20)
        );
        let small = MessageBudget {
            max_message_bytes: ENVELOPE_HEADROOM + 100,
        };
        let err = raw("", &[("title", "t"), ("body", &"b".repeat(100))], 0, small).unwrap_err();
        assert!(
            err.message()
                .starts_with("raw.body: the content adds up to 101 bytes"),
            "{}",
            err.message()
        );
        assert!(raw("", &[("body", &"b".repeat(100))], 0, small).is_ok());
    }
}
