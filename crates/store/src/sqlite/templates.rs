//! [`TemplateStore`](crate::TemplateStore) on SQLite: the `template_versions` table.

use rusqlite::{OptionalExtension, params};

use super::{Context, Db, from_json, to_json};
use crate::StoreError;
use crate::templates::{TemplateStore, TemplateVersion, decode_variants, encode_variants, key};

pub(crate) struct SqliteTemplates(pub(crate) Db);

type TemplateRow = (u32, Option<String>, String, String, String, i64);

#[async_trait::async_trait]
impl TemplateStore for SqliteTemplates {
    async fn create_version(&self, t: &TemplateVersion) -> Result<(), StoreError> {
        const OP: &str = "templates.create_version";
        let key = key(&t.name, t.version);
        let params_json = to_json(OP, &key, &t.params)?;
        let variants = encode_variants(t)?;
        let (name, version, category, default_locale, created_at) = (
            t.name.clone(),
            t.version,
            t.category.clone(),
            t.default_locale.clone(),
            t.created_at,
        );
        // A plain INSERT: the primary key turns a second write of the same
        // version into a constraint violation, reported as a Conflict.
        self.0
            .call(move |c| {
                c.prepare_cached(
                    "INSERT INTO template_versions
                     (name, version, category, params, default_locale, variants, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    name,
                    version,
                    category,
                    params_json,
                    default_locale,
                    variants,
                    created_at
                ])
            })
            .await
            .ctx(OP, &key)?;
        Ok(())
    }

    async fn get(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<TemplateVersion>, StoreError> {
        const OP: &str = "templates.get";
        let owned_name = name.to_owned();
        let row: Option<TemplateRow> = self
            .0
            .call(move |c| {
                c.prepare_cached(
                    "SELECT version, category, params, default_locale, variants, created_at FROM template_versions
                     WHERE name = ?1 AND (?2 IS NULL OR version = ?2) ORDER BY version DESC LIMIT 1",
                )?
                .query_row(params![owned_name, version], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                })
                .optional()
            })
            .await
            .ctx(OP, name)?;
        let Some((version, category, params, default_locale, variants, created_at)) = row else {
            return Ok(None);
        };
        Ok(Some(TemplateVersion {
            name: name.to_owned(),
            version,
            category,
            params: from_json(OP, &key(name, version), &params)?,
            default_locale,
            variants: decode_variants(name, version, &variants)?,
            created_at,
        }))
    }

    async fn list_versions(&self, name: &str) -> Result<Vec<u32>, StoreError> {
        let owned_name = name.to_owned();
        self.0
            .call(move |c| {
                c.prepare_cached(
                    "SELECT version FROM template_versions WHERE name = ?1 ORDER BY version",
                )?
                .query_map([&owned_name], |r| r.get(0))?
                .collect()
            })
            .await
            .ctx("templates.list_versions", name)
    }
}
