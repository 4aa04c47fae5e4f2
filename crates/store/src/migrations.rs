//! Versioned schema migrations, the part both engines share.
//!
//! Each engine ships its scripts as `migrations/<engine>/NNNN_name.<ext>`;
//! `NNNN` is the migration's version. A store records every migration it
//! applied in its `schema_migrations` table (version, name, checksum, time),
//! and a migrate applies only the versions not recorded yet, in order.
//!
//! - A store whose recorded version is newer than this build knows was
//!   migrated by a newer release: it is refused ([`StoreError::SchemaTooNew`]),
//!   since this build's statements may not fit its schema.
//! - A recorded migration whose checksum differs from this build's script
//!   was edited after it was applied: a warning, and `tidings migrate
//!   --status` shows it; the store keeps the schema it has.
//! - A store created by a release before versioned migrations has the tables
//!   but no `schema_migrations`: every script of those releases (versions 1
//!   to [`BASELINE`]) is `CREATE ... IF NOT EXISTS` and was never edited in
//!   place (tables were only added), so applying them again creates only what
//!   is missing, and then records them. A unit test per engine holds
//!   versions 1 to [`BASELINE`] to that.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::script::{self, ScriptError};
use crate::{Millis, StoreError};

/// The last version shipped before versioned migrations existed. Scripts up
/// to it must stay re-runnable (see the module docs).
pub(crate) const BASELINE: u32 = 3;

/// One migration script of this build.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    pub version: u32,
    /// The file name without its version and extension, e.g. `init`.
    pub name: &'static str,
    pub file: &'static str,
    pub script: &'static str,
}

impl Migration {
    /// Reads the version and name from a `NNNN_name.ext` file name. Panics on
    /// a bad name: the list is a constant of this build, and a unit test of
    /// each engine calls this for every file.
    pub const fn new(file: &'static str, script: &'static str) -> Migration {
        let bytes = file.as_bytes();
        let mut version = 0u32;
        let mut i = 0;
        while i < 4 {
            let digit = bytes[i];
            assert!(digit.is_ascii_digit(), "migration file must start NNNN_");
            version = version * 10 + (digit - b'0') as u32;
            i += 1;
        }
        assert!(bytes[4] == b'_', "migration file must start NNNN_");
        let mut end = bytes.len();
        while end > 5 && bytes[end - 1] != b'.' {
            end -= 1;
        }
        assert!(end > 6, "migration file must be NNNN_name.ext");
        let (_, rest) = bytes.split_at(5);
        let (name, _) = rest.split_at(end - 1 - 5);
        let name = match std::str::from_utf8(name) {
            Ok(name) => name,
            Err(_) => panic!("migration file name must be UTF-8"),
        };
        Migration {
            version,
            name,
            file,
            script,
        }
    }

    /// SHA-256 of the script's statements, without comments or layout, so
    /// that clarifying a comment in an applied migration is not a change.
    pub fn checksum(&self) -> Result<String, ScriptError> {
        let digest = Sha256::digest(script::normalized(self.script)?.as_bytes());
        Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// A row of a store's `schema_migrations` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    pub version: u32,
    pub name: String,
    pub checksum: String,
    pub applied_at: Millis,
}

/// What a store's `schema_migrations` table says, as read before migrating.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recorded {
    /// The store has a `schema_migrations` table.
    pub versioned: bool,
    /// The store has tables of the application (`users`): with `versioned`
    /// false, a store created by a release before versioned migrations.
    pub has_tables: bool,
    pub applied: Vec<AppliedMigration>,
}

/// The migrations `known` that `recorded` lacks, in version order; refuses a
/// store migrated by a newer build, and warns about edited migrations.
pub(crate) fn pending<'m>(
    backend: &'static str,
    known: &'m [Migration],
    recorded: &Recorded,
) -> Result<Vec<&'m Migration>, StoreError> {
    let status = SchemaStatus::new(backend, known, recorded)?;
    status.refuse_if_too_new()?;
    for m in status.migrations.iter() {
        if let State::Applied {
            checksum_matches: false,
            ..
        } = m.state
        {
            tracing::warn!(
                backend,
                version = m.version,
                name = %m.name,
                "schema migration {} was changed after this store applied it; the store keeps the schema it applied (see `tidings migrate --status`)",
                m.version
            );
        }
    }
    let pending = unrecorded(known, recorded);
    if !recorded.versioned && recorded.has_tables {
        tracing::info!(
            backend,
            "the store predates versioned migrations: re-applying migrations 1 to {BASELINE} (all CREATE IF NOT EXISTS) and recording them"
        );
    }
    Ok(pending)
}

/// The migrations `known` that `recorded` lacks, in version order.
pub(crate) fn unrecorded<'m>(known: &'m [Migration], recorded: &Recorded) -> Vec<&'m Migration> {
    known
        .iter()
        .filter(|m| !recorded.applied.iter().any(|a| a.version == m.version))
        .collect()
}

/// For a process that connects without migrating: refuses a store migrated
/// by a newer build, and warns when this build has migrations the store
/// lacks (its statements on new tables would fail until `tidings migrate`).
pub(crate) fn check(
    backend: &'static str,
    known: &[Migration],
    recorded: &Recorded,
) -> Result<(), StoreError> {
    let status = SchemaStatus::new(backend, known, recorded)?;
    status.refuse_if_too_new()?;
    let pending = status.pending();
    if !pending.is_empty() {
        tracing::warn!(
            backend,
            ?pending,
            "the store lacks schema migrations this build has; run `tidings migrate` (or `tidings init`)"
        );
    }
    Ok(())
}

/// Where a store's schema stands against this build's migrations:
/// `tidings migrate --status`.
#[derive(Debug, Clone)]
pub struct SchemaStatus {
    /// `"scylla"` or `"sqlite"`.
    pub backend: &'static str,
    /// Every migration this build knows, in version order.
    pub migrations: Vec<MigrationStatus>,
    /// Migrations the store recorded that this build does not know (newer).
    pub unknown: Vec<AppliedMigration>,
    /// The store has the tables but no record of migrations: created by a
    /// release before versioned migrations (the next migrate records it).
    pub unversioned: bool,
}

/// One migration of this build and whether the store applied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub version: u32,
    pub name: String,
    pub state: State,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Pending,
    Applied {
        applied_at: Millis,
        /// False when the script changed after the store applied it.
        checksum_matches: bool,
    },
}

impl SchemaStatus {
    pub(crate) fn new(
        backend: &'static str,
        known: &[Migration],
        recorded: &Recorded,
    ) -> Result<SchemaStatus, StoreError> {
        let mut migrations = Vec::with_capacity(known.len());
        for m in known {
            let checksum = m.checksum().map_err(|e| StoreError::Migration {
                backend,
                migration: m.file.to_owned(),
                source: e.into(),
            })?;
            let state = match recorded.applied.iter().find(|a| a.version == m.version) {
                None => State::Pending,
                Some(a) => State::Applied {
                    applied_at: a.applied_at,
                    checksum_matches: a.checksum == checksum,
                },
            };
            migrations.push(MigrationStatus {
                version: m.version,
                name: m.name.to_owned(),
                state,
            });
        }
        let newest_known = known.iter().map(|m| m.version).max().unwrap_or(0);
        let mut unknown: Vec<AppliedMigration> = recorded
            .applied
            .iter()
            .filter(|a| a.version > newest_known)
            .cloned()
            .collect();
        unknown.sort_by_key(|a| a.version);
        Ok(SchemaStatus {
            backend,
            migrations,
            unknown,
            unversioned: !recorded.versioned && recorded.has_tables,
        })
    }

    /// The newest version this build knows.
    pub fn known_version(&self) -> u32 {
        self.migrations.iter().map(|m| m.version).max().unwrap_or(0)
    }

    /// The newest version the store recorded (0: none).
    pub fn store_version(&self) -> u32 {
        let known = self.migrations.iter().filter_map(|m| match m.state {
            State::Applied { .. } => Some(m.version),
            State::Pending => None,
        });
        known
            .chain(self.unknown.iter().map(|a| a.version))
            .max()
            .unwrap_or(0)
    }

    /// Versions this build knows that the store has not applied.
    pub fn pending(&self) -> Vec<u32> {
        self.migrations
            .iter()
            .filter(|m| m.state == State::Pending)
            .map(|m| m.version)
            .collect()
    }

    /// A store migrated by a newer build is not for this one.
    pub(crate) fn refuse_if_too_new(&self) -> Result<(), StoreError> {
        if self.unknown.is_empty() {
            return Ok(());
        }
        Err(StoreError::SchemaTooNew {
            backend: self.backend,
            store_version: self.store_version(),
            known_version: self.known_version(),
        })
    }
}

impl fmt::Display for SchemaStatus {
    /// A table a person reads: version, name, state, applied at (UTC).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} store at schema version {}; this build knows up to {}",
            self.backend,
            self.store_version(),
            self.known_version()
        )?;
        if self.unversioned {
            writeln!(
                f,
                "(created by a release before versioned migrations: `tidings migrate` records it without changing existing tables)"
            )?;
        }
        writeln!(
            f,
            "{:<8} {:<20} {:<9} APPLIED AT",
            "VERSION", "NAME", "STATE"
        )?;
        for m in &self.migrations {
            let (state, at) = match &m.state {
                State::Pending => ("pending", String::new()),
                State::Applied {
                    applied_at,
                    checksum_matches,
                } => {
                    let at = utc(*applied_at);
                    if *checksum_matches {
                        ("applied", at)
                    } else {
                        ("changed", format!("{at} (script changed since)"))
                    }
                }
            };
            let line = format!("{:<8} {:<20} {:<9} {}", m.version, m.name, state, at);
            writeln!(f, "{}", line.trim_end())?;
        }
        for a in &self.unknown {
            writeln!(
                f,
                "{:<8} {:<20} {:<9} {} (newer than this build)",
                a.version,
                a.name,
                "unknown",
                utc(a.applied_at)
            )?;
        }
        Ok(())
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time in milliseconds.
fn utc(millis: Millis) -> String {
    let secs = millis.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm), proleptic Gregorian.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const KNOWN: &[Migration] = &[
        Migration::new(
            "0001_init.cql",
            "CREATE TABLE IF NOT EXISTS a (k int PRIMARY KEY);",
        ),
        Migration::new(
            "0002_more.cql",
            "CREATE TABLE IF NOT EXISTS b (k int PRIMARY KEY);",
        ),
    ];

    fn applied(m: &Migration) -> AppliedMigration {
        AppliedMigration {
            version: m.version,
            name: m.name.to_owned(),
            checksum: m.checksum().expect("checksum"),
            applied_at: 1_700_000_000_000,
        }
    }

    /// Every shipped script of an engine: versions 1..N without gaps, each
    /// splits, and the baseline ones can be re-run on a store that has their
    /// tables (only `CREATE ... IF NOT EXISTS`).
    pub(crate) fn check_shipped(migrations: &[Migration]) {
        for (i, m) in migrations.iter().enumerate() {
            assert_eq!(
                m.version as usize,
                i + 1,
                "{}: versions are 1..N in order",
                m.file
            );
            let statements =
                script::statements(m.script).unwrap_or_else(|e| panic!("{}: {e}", m.file));
            assert!(!statements.is_empty(), "{}", m.file);
            m.checksum().unwrap_or_else(|e| panic!("{}: {e}", m.file));
            if m.version <= BASELINE {
                for s in &statements {
                    assert!(
                        s.starts_with("CREATE TABLE IF NOT EXISTS ")
                            || s.starts_with("CREATE INDEX IF NOT EXISTS "),
                        "{}: baseline migrations must be re-runnable, found `{s}`",
                        m.file
                    );
                }
            }
        }
        assert!(migrations.len() as u32 >= BASELINE);
    }

    #[test]
    fn file_names_give_version_and_name() {
        let m = Migration::new("0012_pulled_authors.cql", "");
        assert_eq!((m.version, m.name), (12, "pulled_authors"));
    }

    #[test]
    fn a_fresh_store_has_everything_pending() {
        let pending = pending("sqlite", KNOWN, &Recorded::default()).expect("plan");
        assert_eq!(
            pending.iter().map(|m| m.version).collect::<Vec<_>>(),
            [1, 2]
        );
    }

    #[test]
    fn only_unrecorded_versions_are_pending() {
        let recorded = Recorded {
            versioned: true,
            has_tables: true,
            applied: vec![applied(&KNOWN[0])],
        };
        let pending = pending("sqlite", KNOWN, &recorded).expect("plan");
        assert_eq!(pending.iter().map(|m| m.version).collect::<Vec<_>>(), [2]);
        let status = SchemaStatus::new("sqlite", KNOWN, &recorded).expect("status");
        assert_eq!((status.store_version(), status.known_version()), (1, 2));
        assert_eq!(status.pending(), [2]);
    }

    #[test]
    fn a_store_newer_than_the_build_is_refused() {
        let mut recorded = Recorded {
            versioned: true,
            has_tables: true,
            applied: KNOWN.iter().map(applied).collect(),
        };
        recorded.applied.push(AppliedMigration {
            version: 7,
            name: "future".into(),
            checksum: "x".into(),
            applied_at: 0,
        });
        let err = pending("scylla", KNOWN, &recorded).expect_err("too new");
        assert!(
            matches!(
                err,
                StoreError::SchemaTooNew {
                    store_version: 7,
                    known_version: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert!(!err.is_retriable());
        let message = err.to_string();
        assert!(
            message.contains("version 7") && message.contains("up to 2"),
            "{message}"
        );
    }

    #[test]
    fn an_edited_migration_shows_as_changed() {
        let mut edited = applied(&KNOWN[0]);
        edited.checksum = "0".repeat(64);
        let recorded = Recorded {
            versioned: true,
            has_tables: true,
            applied: vec![edited, applied(&KNOWN[1])],
        };
        // Not a reason to refuse: the store keeps the schema it has.
        assert!(
            pending("sqlite", KNOWN, &recorded)
                .expect("plan")
                .is_empty()
        );
        let status = SchemaStatus::new("sqlite", KNOWN, &recorded).expect("status");
        assert_eq!(
            status.migrations[0].state,
            State::Applied {
                applied_at: 1_700_000_000_000,
                checksum_matches: false
            }
        );
        let table = status.to_string();
        assert!(table.contains("changed"), "{table}");
    }

    #[test]
    fn status_prints_one_line_per_migration() {
        let recorded = Recorded {
            versioned: true,
            has_tables: true,
            applied: vec![applied(&KNOWN[0])],
        };
        let table = SchemaStatus::new("sqlite", KNOWN, &recorded)
            .expect("status")
            .to_string();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[0].contains("schema version 1") && lines[0].contains("up to 2"),
            "{table}"
        );
        assert!(
            lines[2].starts_with("1 ")
                && lines[2].contains("init")
                && lines[2].contains("applied")
                && lines[2].contains("2023-11-14T22:13:20Z"),
            "{table}"
        );
        assert!(
            lines[3].starts_with("2 ") && lines[3].contains("more") && lines[3].contains("pending"),
            "{table}"
        );
    }

    #[test]
    fn utc_formats_unix_millis() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_700_000_000_999), "2023-11-14T22:13:20Z");
    }
}
