//! [`TemplateStore`](crate::TemplateStore) on CQL: the `template_versions` table.

use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};

use super::{Context, Cql, from_int, to_int};
use crate::templates::{TemplateStore, TemplateVersion, decode_variants, encode_variants, key};
use crate::{Millis, StoreError};

pub(crate) struct ScyllaTemplates {
    cql: Cql,
    create: PreparedStatement,
    get_latest: PreparedStatement,
    get_version: PreparedStatement,
    versions: PreparedStatement,
}

type TemplateRow = (
    i32,
    Option<String>,
    Option<Vec<String>>,
    String,
    String,
    Millis,
);

const COLUMNS: &str = "version, category, params, default_locale, variants, created_at";

impl ScyllaTemplates {
    pub(crate) async fn prepare(cql: &Cql) -> Result<Self, StoreError> {
        Ok(ScyllaTemplates {
            // A lightweight transaction: versions are immutable, and two
            // authors publishing the same version must not overwrite each
            // other. Rare writes, so the Paxos round trips do not matter.
            create: cql
                .prepare_once_only(
                    "INSERT INTO template_versions
                     (name, version, category, params, default_locale, variants, created_at)
                     VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS",
                )
                .await?,
            get_latest: cql
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM template_versions WHERE name = ? LIMIT 1"
                ))
                .await?,
            get_version: cql
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM template_versions WHERE name = ? AND version = ?"
                ))
                .await?,
            versions: cql
                .prepare("SELECT version FROM template_versions WHERE name = ?")
                .await?,
            cql: cql.clone(),
        })
    }
}

#[async_trait::async_trait]
impl TemplateStore for ScyllaTemplates {
    async fn create_version(&self, t: &TemplateVersion) -> Result<(), StoreError> {
        const OP: &str = "templates.create_version";
        let key = key(&t.name, t.version);
        let values = (
            &t.name,
            to_int(OP, &key, t.version)?,
            &t.category,
            &t.params,
            &t.default_locale,
            encode_variants(t)?,
            t.created_at,
        );
        // The first column of an LWT result is `[applied]`; when false, the
        // existing row's columns follow, hence the untyped row.
        let outcome = self
            .cql
            .maybe_row::<Row>(&self.create, values)
            .await
            .ctx(OP, &key)?;
        match outcome.as_ref().and_then(|row| row.columns.first()) {
            Some(Some(CqlValue::Boolean(true))) => Ok(()),
            Some(Some(CqlValue::Boolean(false))) => Err(StoreError::Conflict { op: OP, key }),
            _ => Err(StoreError::invalid_data(
                OP,
                key,
                "LWT result without an [applied] column",
            )),
        }
    }

    async fn get(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<TemplateVersion>, StoreError> {
        const OP: &str = "templates.get";
        let row = match version {
            None => {
                self.cql
                    .maybe_row::<TemplateRow>(&self.get_latest, (name,))
                    .await
            }
            Some(v) => {
                let v = to_int(OP, &key(name, v), v)?;
                self.cql
                    .maybe_row::<TemplateRow>(&self.get_version, (name, v))
                    .await
            }
        }
        .ctx(OP, name)?;
        let Some((version, category, params, default_locale, variants, created_at)) = row else {
            return Ok(None);
        };
        let version = from_int(OP, name, version)?;
        Ok(Some(TemplateVersion {
            name: name.to_owned(),
            version,
            category,
            // CQL stores an empty list as null.
            params: params.unwrap_or_default(),
            default_locale,
            variants: decode_variants(name, version, &variants)?,
            created_at,
        }))
    }

    async fn list_versions(&self, name: &str) -> Result<Vec<u32>, StoreError> {
        const OP: &str = "templates.list_versions";
        let rows = self
            .cql
            .all_rows::<(i32,)>(&self.versions, (name,))
            .await
            .ctx(OP, name)?;
        // Clustering order is newest first.
        rows.into_iter()
            .rev()
            .map(|(v,)| from_int(OP, name, v))
            .collect()
    }
}
