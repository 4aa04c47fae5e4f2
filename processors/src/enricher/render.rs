//! Template rendering: `{{param}}` placeholders filled from the send's
//! parameters, in the variant for the user's locale.

use std::collections::BTreeMap;

use tidings_store::{TemplateContent, TemplateVersion};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("template {template} needs parameter `{param}`, which the send did not give")]
    MissingParam { template: String, param: String },
    #[error("template {template} has an unclosed `{{{{` in {field}")]
    Unclosed {
        template: String,
        field: &'static str,
    },
}

/// The rendered content of one notification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    pub locale: String,
    pub title: Option<String>,
    pub body: Option<String>,
    pub sms_text: Option<String>,
    pub email_subject: Option<String>,
    pub email_html: Option<String>,
    pub email_text: Option<String>,
    /// The in-app inbox item.
    pub in_app: InAppContent,
}

/// What the `in_app` channel shows: its own parts where the template has
/// them, else the push title and body (see [`InAppContent::or_push`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InAppContent {
    pub title: Option<String>,
    pub body: Option<String>,
    pub action_url: Option<String>,
    pub avatar_url: Option<String>,
}

impl InAppContent {
    /// Fills a missing title or body from the push ones, so a template or a
    /// raw send written for push also fills the inbox.
    pub fn or_push(mut self, push_title: &Option<String>, push_body: &Option<String>) -> Self {
        self.title = self.title.or_else(|| push_title.clone());
        self.body = self.body.or_else(|| push_body.clone());
        self
    }

    /// Whether there is anything to show: an item with neither a title nor
    /// a body is not delivered.
    pub fn is_empty(&self) -> bool {
        let blank = |s: &Option<String>| s.as_deref().is_none_or(|s| s.trim().is_empty());
        blank(&self.title) && blank(&self.body)
    }
}

/// Picks the variant for `locale`: exact tag, then its language
/// (`fr-CA` -> `fr`), then the template's default locale.
pub fn pick_variant<'t>(
    template: &'t TemplateVersion,
    locale: Option<&str>,
) -> Option<(&'t str, &'t TemplateContent)> {
    let lookup = |tag: &str| {
        template
            .variants
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(tag))
            .map(|(k, v)| (k.as_str(), v))
    };
    locale
        .and_then(|l| lookup(l).or_else(|| l.split('-').next().and_then(lookup)))
        .or_else(|| lookup(&template.default_locale))
        .or_else(|| {
            template
                .variants
                .iter()
                .next()
                .map(|(k, v)| (k.as_str(), v))
        })
}

/// Renders `template`; `track` turns each `{{link.name}}` destination into
/// the URL users get (a signed tracking redirect in production).
pub fn render(
    template: &TemplateVersion,
    locale: Option<&str>,
    params: &BTreeMap<String, String>,
    track: &dyn Fn(&str) -> String,
) -> Result<Rendered, RenderError> {
    let Some((locale, content)) = pick_variant(template, locale) else {
        return Ok(Rendered::default());
    };
    let name = format!("{}@{}", template.name, template.version);
    let fill = |field: &'static str,
                text: &Option<String>,
                html: bool|
     -> Result<Option<String>, RenderError> {
        text.as_deref()
            .map(|t| {
                substitute(
                    &name,
                    field,
                    t,
                    params,
                    &content.tracking_links,
                    track,
                    html,
                )
            })
            .transpose()
    };
    let title = fill("push_title", &content.push_title, false)?;
    let body = fill("push_body", &content.push_body, false)?;
    let in_app = InAppContent {
        title: fill("in_app_title", &content.in_app_title, false)?,
        body: fill("in_app_body", &content.in_app_body, false)?,
        action_url: fill("in_app_action_url", &content.in_app_action_url, false)?,
        avatar_url: fill("in_app_avatar_url", &content.in_app_avatar_url, false)?,
    }
    .or_push(&title, &body);
    Ok(Rendered {
        locale: locale.to_owned(),
        title,
        body,
        sms_text: fill("sms_text", &content.sms_text, false)?,
        email_subject: fill("email_subject", &content.email_subject, false)?,
        email_html: fill("email_html", &content.email_html, true)?,
        email_text: fill("email_text", &content.email_text, false)?,
        in_app,
    })
}

fn substitute(
    template: &str,
    field: &'static str,
    text: &str,
    params: &BTreeMap<String, String>,
    links: &BTreeMap<String, String>,
    track: &dyn Fn(&str) -> String,
    html: bool,
) -> Result<String, RenderError> {
    let mut out = String::with_capacity(text.len() + 32);
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| RenderError::Unclosed {
            template: template.to_owned(),
            field,
        })?;
        let name = after[..end].trim();
        let missing = || RenderError::MissingParam {
            template: template.to_owned(),
            param: name.to_owned(),
        };
        let value = match name.strip_prefix("link.") {
            Some(link) => track(links.get(link).ok_or_else(missing)?),
            None => params.get(name).ok_or_else(missing)?.clone(),
        };
        if html {
            escape_html(&value, &mut out)
        } else {
            out.push_str(&value)
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parameters are caller data; in HTML they must not become markup.
fn escape_html(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> TemplateVersion {
        let en = TemplateContent {
            push_title: Some("Hi {{name}}".into()),
            push_body: Some("You owe {{ amount }}".into()),
            email_html: Some("<p>{{name}}</p><a href=\"{{link.invoice}}\">pay</a>".into()),
            tracking_links: BTreeMap::from([("invoice".into(), "https://x/i".into())]),
            ..Default::default()
        };
        let fr = TemplateContent {
            push_title: Some("Bonjour {{name}}".into()),
            ..Default::default()
        };
        TemplateVersion {
            name: "invoice".into(),
            version: 2,
            category: None,
            params: vec!["name".into(), "amount".into()],
            default_locale: "en".into(),
            variants: BTreeMap::from([("en".into(), en), ("fr".into(), fr)]),
            created_at: 0,
        }
    }

    fn same(url: &str) -> String {
        url.to_owned()
    }

    fn params() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("name".into(), "<Ann>".into()),
            ("amount".into(), "$3".into()),
        ])
    }

    #[test]
    fn renders_the_users_locale_with_fallbacks() {
        let t = template();
        assert_eq!(
            render(&t, Some("fr-CA"), &params(), &same)
                .unwrap()
                .title
                .as_deref(),
            Some("Bonjour <Ann>")
        );
        assert_eq!(
            render(&t, Some("FR"), &params(), &same).unwrap().locale,
            "fr"
        );
        let en = render(&t, Some("de-DE"), &params(), &same).unwrap();
        assert_eq!(en.locale, "en");
        assert_eq!(en.body.as_deref(), Some("You owe $3"));
        assert_eq!(render(&t, None, &params(), &same).unwrap().locale, "en");
    }

    #[test]
    fn html_escapes_parameters_and_fills_links() {
        let r = render(&template(), Some("en"), &params(), &|url| {
            format!("https://t/c?to={url}")
        })
        .unwrap();
        assert_eq!(
            r.email_html.as_deref(),
            Some("<p>&lt;Ann&gt;</p><a href=\"https://t/c?to=https://x/i\">pay</a>")
        );
    }

    #[test]
    fn the_in_app_item_has_its_own_parts_else_the_push_ones() {
        let mut t = template();
        // `fr` has no in-app parts: the push title, and no body at all.
        let fr = render(&t, Some("fr"), &params(), &same).unwrap().in_app;
        assert_eq!(fr.title.as_deref(), Some("Bonjour <Ann>"));
        assert_eq!(fr.body, None);
        assert_eq!((fr.action_url, fr.avatar_url), (None, None));
        let en = t.variants.get_mut("en").unwrap();
        en.in_app_title = Some("{{name}}, an invoice".into());
        en.in_app_action_url = Some("{{link.invoice}}".into());
        en.in_app_avatar_url = Some("https://cdn/{{amount}}.png".into());
        let r = render(&t, Some("en"), &params(), &|url| {
            format!("https://t/c?to={url}")
        })
        .unwrap();
        assert_eq!(
            r.in_app,
            InAppContent {
                title: Some("<Ann>, an invoice".into()),
                // No in_app_body: the push body.
                body: Some("You owe $3".into()),
                // Links are tracked like in every other part; params are
                // filled and, outside HTML, not escaped.
                action_url: Some("https://t/c?to=https://x/i".into()),
                avatar_url: Some("https://cdn/$3.png".into()),
            }
        );
        assert_eq!(r.title.as_deref(), Some("Hi <Ann>"), "push keeps its own");
        let err = render(&t, Some("en"), &BTreeMap::new(), &same).unwrap_err();
        assert!(matches!(err, RenderError::MissingParam { .. }), "{err}");
    }

    #[test]
    fn an_in_app_item_without_title_or_body_is_empty() {
        let blank = InAppContent {
            title: Some(" ".into()),
            action_url: Some("https://x".into()),
            ..InAppContent::default()
        };
        assert!(blank.is_empty());
        assert!(!blank.clone().or_push(&None, &Some("b".into())).is_empty());
        assert!(blank.or_push(&None, &None).is_empty());
    }

    #[test]
    fn missing_parameters_are_errors() {
        let err = render(&template(), Some("en"), &BTreeMap::new(), &same).unwrap_err();
        assert!(
            matches!(err, RenderError::MissingParam { ref param, .. } if param == "name"),
            "{err}"
        );
    }
}
