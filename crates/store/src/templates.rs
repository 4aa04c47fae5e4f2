//! Versioned notification templates. A version is immutable once written:
//! content changes create a new version, so in-flight notifications keep
//! rendering the version they were enriched with.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Millis, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateVersion {
    pub name: String,
    pub version: u32,
    pub category: Option<String>,
    /// Names of the parameters the content refers to.
    pub params: Vec<String>,
    pub default_locale: String,
    /// Content per BCP 47 locale.
    pub variants: BTreeMap<String, TemplateContent>,
    pub created_at: Millis,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateContent {
    pub push_title: Option<String>,
    pub push_body: Option<String>,
    pub sms_text: Option<String>,
    pub email_subject: Option<String>,
    pub email_html: Option<String>,
    pub email_text: Option<String>,
    /// The in-app inbox item; title and body fall back to the push ones.
    pub in_app_title: Option<String>,
    pub in_app_body: Option<String>,
    pub in_app_action_url: Option<String>,
    pub in_app_avatar_url: Option<String>,
    /// Link name to target URL; rewritten into tracked links when rendering.
    pub tracking_links: BTreeMap<String, String>,
}

#[async_trait::async_trait]
pub trait TemplateStore: Send + Sync + 'static {
    /// Fails with [`StoreError::Conflict`] if (name, version) already exists.
    async fn create_version(&self, template: &TemplateVersion) -> Result<(), StoreError>;
    /// A given version, or the latest one when `version` is `None`.
    async fn get(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<TemplateVersion>, StoreError>;
    /// All versions of `name`, ascending.
    async fn list_versions(&self, name: &str) -> Result<Vec<u32>, StoreError>;
}

/// Both engines keep the locale variants as one JSON text column.
pub(crate) fn encode_variants(template: &TemplateVersion) -> Result<String, StoreError> {
    serde_json::to_string(&template.variants).map_err(|e| {
        StoreError::invalid_data(
            "templates.create_version",
            key(&template.name, template.version),
            e,
        )
    })
}

pub(crate) fn decode_variants(
    name: &str,
    version: u32,
    json: &str,
) -> Result<BTreeMap<String, TemplateContent>, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::invalid_data("templates.get", key(name, version), e))
}

pub(crate) fn key(name: &str, version: u32) -> String {
    format!("{name}@{version}")
}
