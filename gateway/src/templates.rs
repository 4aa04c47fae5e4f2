//! `tidings.v1.TemplateService`: versioned templates. A version never
//! changes once written; a put creates the next version.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use quick_cache::sync::Cache;

use tidings_kafka::now_millis;
use tidings_schemas::proto::v1::{
    self as pb, GetTemplateRequest, GetTemplateResponse, GetTemplateStatsRequest,
    GetTemplateStatsResponse, PutTemplateRequest, PutTemplateResponse,
    template_service_server::TemplateService,
};
use tidings_schemas::records::TrackingKind;
use tidings_store::{StoreError, TemplateContent, TemplateStore, TemplateVersion};
use tonic::{Request, Response, Status};

use crate::{Gateway, limits, stale_cache::StaleCache, store_status, validate};

/// How long a template's latest version is reused by sends that name no
/// version: a version put through another gateway is used within this long
/// (at once through this one).
pub const LATEST_TTL: Duration = Duration::from_secs(1);

/// Bytes of templates each of the gateway's two template caches holds.
pub const CACHE_BYTES: u64 = 64 << 20;

fn template_bytes(t: &Arc<TemplateVersion>) -> u64 {
    let parts: usize = t
        .variants
        .iter()
        .map(|(locale, c)| {
            let text = [
                &c.push_title,
                &c.push_body,
                &c.sms_text,
                &c.email_subject,
                &c.email_html,
                &c.email_text,
                &c.in_app_title,
                &c.in_app_body,
                &c.in_app_action_url,
                &c.in_app_avatar_url,
            ]
            .iter()
            .map(|p| p.as_ref().map_or(0, String::len))
            .sum::<usize>();
            let links: usize = c
                .tracking_links
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum();
            locale.len() + text + links
        })
        .sum();
    (parts + t.name.len() + 256) as u64
}

#[derive(Clone)]
struct TemplateWeight;

impl quick_cache::Weighter<(String, u32), Arc<TemplateVersion>> for TemplateWeight {
    fn weight(&self, _: &(String, u32), t: &Arc<TemplateVersion>) -> u64 {
        template_bytes(t)
    }
}

/// The templates `Send` checks params against, so sends keep being accepted
/// while the store is unreachable: versions are immutable and kept until
/// evicted; the latest version of a name is re-read after [`LATEST_TTL`],
/// and served stale (up to `gateway.auth_stale_serve_secs`) when the store
/// cannot be read. Both are bounded by bytes ([`CACHE_BYTES`]).
pub struct TemplateCache {
    latest: StaleCache<String, Arc<TemplateVersion>>,
    versions: Cache<(String, u32), Arc<TemplateVersion>, TemplateWeight>,
}

impl TemplateCache {
    pub fn new(stale_for: Duration) -> Self {
        Self {
            latest: StaleCache::weighted(
                "template",
                1_000,
                CACHE_BYTES,
                template_bytes,
                LATEST_TTL,
                stale_for,
            ),
            versions: Cache::with_weighter(1_000, CACHE_BYTES, TemplateWeight),
        }
    }

    /// `version` of `name`, or its latest version.
    pub async fn get(
        &self,
        store: &dyn TemplateStore,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<Arc<TemplateVersion>>, StoreError> {
        let found = match version {
            Some(v) => {
                if let Some(t) = self.versions.get(&(name.to_owned(), v)) {
                    return Ok(Some(t));
                }
                // Not cached when missing: the version may be put next.
                store.get(name, Some(v)).await?.map(Arc::new)
            }
            None => self
                .latest
                .get(&name.to_owned(), || async {
                    Ok(store.get(name, None).await?.map(Arc::new))
                })
                .await?
                .into_value(),
        };
        if let Some(t) = &found {
            self.versions.insert((t.name.clone(), t.version), t.clone());
        }
        Ok(found)
    }

    /// A version this gateway just wrote is the latest at once.
    pub fn put(&self, t: TemplateVersion) {
        let t = Arc::new(t);
        self.versions.insert((t.name.clone(), t.version), t.clone());
        self.latest.insert(t.name.clone(), t);
    }
}

/// Counter scope the `template-stats` stage writes (processors/src/tracking).
const TEMPLATE_COUNTERS: &str = "template";

/// The `{{name}}` placeholders of a text.
pub fn placeholders(text: &str) -> Result<BTreeSet<String>, String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or("has an unclosed {{")?;
        names.insert(after[..end].trim().to_owned());
        rest = &after[end + 2..];
    }
    Ok(names)
}

fn content_fields(c: &pb::TemplateContent) -> [(&'static str, &str); 10] {
    [
        ("push_title", &c.push_title),
        ("push_body", &c.push_body),
        ("sms_text", &c.sms_text),
        ("email_subject", &c.email_subject),
        ("email_html", &c.email_html),
        ("email_text", &c.email_text),
        ("in_app_title", &c.in_app_title),
        ("in_app_body", &c.in_app_body),
        ("in_app_action_url", &c.in_app_action_url),
        ("in_app_avatar_url", &c.in_app_avatar_url),
    ]
}

/// Checks a template and converts it to the stored form (version unset).
pub fn to_template(t: pb::Template) -> Result<TemplateVersion, Status> {
    validate::id("template.name", &t.name)?;
    let params: BTreeSet<String> = t.params.iter().cloned().collect();
    for (i, p) in t.params.iter().enumerate() {
        validate::id(&format!("template.params[{i}]"), p)?;
    }
    if t.variants.is_empty() {
        return Err(validate::invalid(
            "template.variants",
            "needs at least one locale",
        ));
    }
    if !t.variants.contains_key(&t.default_locale) {
        return Err(validate::invalid(
            "template.default_locale",
            format!("`{}` has no variant", t.default_locale),
        ));
    }
    let mut variants = BTreeMap::new();
    for (locale, c) in t.variants {
        for (field, text) in content_fields(&c) {
            let path = format!("template.variants[{locale}].{field}");
            limits::at_most(&path, text, limits::part_limit(field))?;
            for name in placeholders(text).map_err(|e| validate::invalid(&path, e))? {
                let known = match name.strip_prefix("link.") {
                    Some(link) => c.tracking_links.contains_key(link),
                    None => params.contains(&name),
                };
                if !known {
                    return Err(validate::invalid(
                        &path,
                        format!(
                            "uses {{{{{name}}}}}, which is not a declared param or tracking link"
                        ),
                    ));
                }
            }
        }
        let opt = |s: String| (!s.is_empty()).then_some(s);
        variants.insert(
            locale,
            TemplateContent {
                push_title: opt(c.push_title),
                push_body: opt(c.push_body),
                sms_text: opt(c.sms_text),
                email_subject: opt(c.email_subject),
                email_html: opt(c.email_html),
                email_text: opt(c.email_text),
                in_app_title: opt(c.in_app_title),
                in_app_body: opt(c.in_app_body),
                in_app_action_url: opt(c.in_app_action_url),
                in_app_avatar_url: opt(c.in_app_avatar_url),
                tracking_links: c.tracking_links.into_iter().collect(),
            },
        );
    }
    Ok(TemplateVersion {
        name: t.name,
        version: 0,
        category: (!t.category.is_empty()).then_some(t.category),
        params: t.params,
        default_locale: t.default_locale,
        variants,
        created_at: now_millis(),
    })
}

fn to_pb(t: TemplateVersion) -> pb::Template {
    pb::Template {
        name: t.name,
        version: t.version,
        category: t.category.unwrap_or_default(),
        params: t.params,
        default_locale: t.default_locale,
        variants: t
            .variants
            .into_iter()
            .map(|(locale, c)| {
                (
                    locale,
                    pb::TemplateContent {
                        push_title: c.push_title.unwrap_or_default(),
                        push_body: c.push_body.unwrap_or_default(),
                        sms_text: c.sms_text.unwrap_or_default(),
                        email_subject: c.email_subject.unwrap_or_default(),
                        email_html: c.email_html.unwrap_or_default(),
                        email_text: c.email_text.unwrap_or_default(),
                        in_app_title: c.in_app_title.unwrap_or_default(),
                        in_app_body: c.in_app_body.unwrap_or_default(),
                        in_app_action_url: c.in_app_action_url.unwrap_or_default(),
                        in_app_avatar_url: c.in_app_avatar_url.unwrap_or_default(),
                        tracking_links: c.tracking_links.into_iter().collect(),
                    },
                )
            })
            .collect(),
        created_at_ms: t.created_at,
    }
}

#[tonic::async_trait]
impl TemplateService for Gateway {
    async fn put_template(
        &self,
        request: Request<PutTemplateRequest>,
    ) -> Result<Response<PutTemplateResponse>, Status> {
        self.authorize(&request, "templates").await?;
        let t = request
            .into_inner()
            .template
            .ok_or_else(|| validate::invalid("template", "is required"))?;
        let mut template = to_template(t)?;
        // Two writers may race for the next number; the loser takes the one after.
        for _ in 0..5 {
            let latest = self
                .store
                .templates
                .list_versions(&template.name)
                .await
                .map_err(store_status)?;
            template.version = latest.last().copied().unwrap_or(0) + 1;
            match self.store.templates.create_version(&template).await {
                Ok(()) => {
                    let version = template.version;
                    self.templates.put(template);
                    return Ok(Response::new(PutTemplateResponse { version }));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(store_status(e)),
            }
        }
        Err(Status::aborted(
            "template.name: too many concurrent writers; retry",
        ))
    }

    async fn get_template(
        &self,
        request: Request<GetTemplateRequest>,
    ) -> Result<Response<GetTemplateResponse>, Status> {
        self.authorize(&request, "templates").await?;
        let r = request.into_inner();
        validate::id("name", &r.name)?;
        let version = (r.version != 0).then_some(r.version);
        let template = self
            .store
            .templates
            .get(&r.name, version)
            .await
            .map_err(store_status)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "name: no template `{}` (version {})",
                    r.name, r.version
                ))
            })?;
        Ok(Response::new(GetTemplateResponse {
            template: Some(to_pb(template)),
        }))
    }

    async fn get_template_stats(
        &self,
        request: Request<GetTemplateStatsRequest>,
    ) -> Result<Response<GetTemplateStatsResponse>, Status> {
        self.authorize(&request, "templates").await?;
        let name = request.into_inner().name;
        validate::id("name", &name)?;
        // The counters template stats keep, named as they name them (every
        // kind listed is counted).
        let keys: Vec<String> = [
            TrackingKind::Sent,
            TrackingKind::Delivered,
            TrackingKind::Opened,
            TrackingKind::Clicked,
            TrackingKind::Read,
            TrackingKind::Archived,
        ]
        .into_iter()
        .map(|kind| format!("{name}:{}", kind.template_counter().unwrap_or_default()))
        .collect();
        let counts = self
            .store
            .counters
            .get_many(TEMPLATE_COUNTERS, &keys)
            .await
            .map_err(store_status)?;
        let get = |i: usize| counts.get(&keys[i]).copied().unwrap_or(0);
        Ok(Response::new(GetTemplateStatsResponse {
            sent: get(0),
            delivered: get(1),
            opened: get(2),
            clicked: get(3),
            read: get(4),
            archived: get(5),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(body: &str) -> pb::Template {
        pb::Template {
            name: "welcome".into(),
            params: vec!["name".into()],
            default_locale: "en".into(),
            variants: [(
                "en".to_owned(),
                pb::TemplateContent {
                    push_body: body.into(),
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn placeholders_must_be_declared() {
        assert!(to_template(template("Hi {{name}}")).is_ok());
        let err = to_template(template("Hi {{nmae}}")).unwrap_err();
        assert!(
            err.message()
                .starts_with("template.variants[en].push_body:"),
            "{}",
            err.message()
        );
        assert!(to_template(template("Hi {{name")).is_err());
    }

    #[test]
    fn template_parts_are_bounded() {
        let err = to_template(template(&"x".repeat(limits::MAX_BODY_BYTES + 1))).unwrap_err();
        assert!(
            err.message()
                .starts_with("template.variants[en].push_body: is 65537 bytes"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn the_default_locale_needs_a_variant() {
        let mut t = template("x");
        t.default_locale = "fr".into();
        assert!(
            to_template(t)
                .unwrap_err()
                .message()
                .starts_with("template.default_locale")
        );
    }
}
