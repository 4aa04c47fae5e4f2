//! Bad input beyond the API, in the enricher: templates are written by
//! apps and parameters come with every send. Whatever they hold, rendering
//! answers `Ok` or a `RenderError` naming the template, never panics, and
//! its output is bounded by the template and the parameters (no
//! parameter's value is expanded into a placeholder of its own); in HTML,
//! parameters never become markup.
//!
//! Property tests with proptest; case counts are kept small so the file runs
//! in seconds.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tidings_processors::enricher::render::{RenderError, render};
use tidings_store::{TemplateContent, TemplateVersion};

const NAMES: [&str; 4] = ["item", "who", "x", "link.docs"];

/// Template text made of the pieces that matter to the renderer: text,
/// braces, parameter and link names, spaces and anything else.
fn template_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[a-zA-Z <>&\"'éß]{0,8}",
        2 => Just("{{".to_owned()),
        2 => Just("}}".to_owned()),
        1 => Just("{".to_owned()),
        1 => Just("}".to_owned()),
        2 => prop::sample::select(&NAMES[..]).prop_map(|n| format!("{{{{{n}}}}}")),
        1 => prop::sample::select(&NAMES[..]).prop_map(|n| format!("{{{{ {n} }}}}")),
        1 => any::<String>(),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|p| p.concat())
}

fn params() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop_oneof![
            prop::sample::select(&NAMES[..3]).prop_map(str::to_owned),
            any::<String>(),
        ],
        // Values may look like placeholders and markup themselves.
        prop_oneof![
            any::<String>(),
            "[{}<>&\"' a-z]{0,20}",
            Just("{{item}}".to_owned())
        ],
        0..4,
    )
}

fn template(text: String, links: BTreeMap<String, String>) -> TemplateVersion {
    let content = TemplateContent {
        push_title: Some(text.clone()),
        push_body: Some(text.clone()),
        sms_text: Some(text.clone()),
        email_subject: Some(text.clone()),
        email_html: Some(text.clone()),
        email_text: Some(text),
        tracking_links: links,
        ..TemplateContent::default()
    };
    TemplateVersion {
        name: "t".into(),
        version: 1,
        category: None,
        params: NAMES[..3].iter().map(|s| s.to_string()).collect(),
        default_locale: "en".into(),
        variants: [("en".to_owned(), content)].into(),
        created_at: 0,
    }
}

fn track(url: &str) -> String {
    format!("https://t.example.com/t/c/{url}")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn rendering_never_panics_and_is_bounded(
        text in template_text(),
        params in params(),
        link in prop_oneof![any::<String>(), Just("https://example.com/?a=<b>&c".to_owned())],
        locale in proptest::option::of(any::<String>()),
    ) {
        let template = template(text.clone(), [("docs".to_owned(), link.clone())].into());
        match render(&template, locale.as_deref(), &params, &track) {
            Err(RenderError::MissingParam { template, .. } | RenderError::Unclosed { template, .. }) => {
                prop_assert_eq!(template, "t@1");
            }
            Ok(rendered) => {
                // Each placeholder is at least `{{}}` and becomes at most
                // its longest value, escaped (6 bytes a character, `&quot;`).
                let longest = params
                    .values()
                    .map(String::len)
                    .chain([track(&link).len()])
                    .max()
                    .unwrap_or(0);
                let bound = text.len() + text.matches("{{").count() * longest * 6;
                for out in [
                    &rendered.title,
                    &rendered.body,
                    &rendered.sms_text,
                    &rendered.email_subject,
                    &rendered.email_html,
                    &rendered.email_text,
                ] {
                    let out = out.as_deref().unwrap_or_default();
                    prop_assert!(out.len() <= bound, "{} > {bound}", out.len());
                }
                // Parameters never become markup: every `<` in the HTML
                // was in the template itself.
                let html = rendered.email_html.unwrap_or_default();
                prop_assert!(
                    html.matches('<').count() <= text.matches('<').count(),
                    "{html:?} from {text:?} with {params:?}"
                );
            }
        }
    }

    /// A locale picks a variant or falls back; never a panic, whatever the
    /// variants' tags.
    #[test]
    fn any_locale_picks_a_variant(
        tags in prop::collection::vec(any::<String>(), 0..4),
        default_locale in any::<String>(),
        locale in proptest::option::of(any::<String>()),
    ) {
        let mut template = template("hi".into(), BTreeMap::new());
        template.default_locale = default_locale;
        let content = template.variants.remove("en").unwrap_or_default();
        template.variants = tags.into_iter().map(|t| (t, content.clone())).collect();
        let rendered = render(&template, locale.as_deref(), &BTreeMap::new(), &track);
        let rendered = rendered.expect("no parameters, none needed");
        if !template.variants.is_empty() {
            prop_assert_eq!(rendered.body.as_deref(), Some("hi"));
        }
    }
}
