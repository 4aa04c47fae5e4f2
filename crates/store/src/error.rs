//! The one error type of the store: what failed, on which key, and whether
//! retrying can help.

/// A boxed engine error kept as the source of a [`StoreError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store URL could not be understood.
    #[error("invalid store URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// The engine could not be reached or opened.
    #[error("cannot connect to {backend} at {address}: {reason}")]
    Connect {
        backend: &'static str,
        address: String,
        reason: String,
    },

    /// A schema migration failed to apply.
    #[error("{backend} migration {migration} failed: {source}")]
    Migration {
        backend: &'static str,
        migration: String,
        #[source]
        source: BoxError,
    },

    /// The store was migrated by a newer build than this one: its schema may
    /// not fit this build's statements, and migrations are never undone.
    #[error(
        "the {backend} store is at schema version {store_version}, newer than this build knows (up to {known_version}): it was migrated by a newer release of tidings; run that release or a newer one (schema downgrades are not supported, see docs/operations.md#schema-migrations)"
    )]
    SchemaTooNew {
        backend: &'static str,
        store_version: u32,
        known_version: u32,
    },

    /// The write would overwrite something that must stay immutable, e.g. an
    /// existing template version.
    #[error("{op} `{key}`: already exists")]
    Conflict { op: &'static str, key: String },

    /// The caller passed, or the store holds, data that cannot be represented.
    #[error("{op} `{key}`: invalid data: {reason}")]
    InvalidData {
        op: &'static str,
        key: String,
        reason: String,
    },

    /// The engine failed the request.
    #[error("{op} `{key}`: {source}")]
    Backend {
        op: &'static str,
        key: String,
        retriable: bool,
        #[source]
        source: BoxError,
    },
}

impl StoreError {
    /// Whether the same call may succeed later (timeouts, unavailable
    /// replicas, a busy database), as opposed to failing the same way again.
    pub fn is_retriable(&self) -> bool {
        match self {
            StoreError::Connect { .. } => true,
            StoreError::Backend { retriable, .. } => *retriable,
            StoreError::InvalidUrl { .. }
            | StoreError::Migration { .. }
            | StoreError::SchemaTooNew { .. }
            | StoreError::Conflict { .. }
            | StoreError::InvalidData { .. } => false,
        }
    }

    pub(crate) fn invalid_data(
        op: &'static str,
        key: impl Into<String>,
        reason: impl ToString,
    ) -> Self {
        StoreError::InvalidData {
            op,
            key: key.into(),
            reason: reason.to_string(),
        }
    }
}
