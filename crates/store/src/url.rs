//! Parsing of store URLs, which choose the engine (in the manner of Tansu).

use crate::StoreError;

const DEFAULT_CQL_PORT: u16 = 9042;
const DEFAULT_KEYSPACE: &str = "tidings";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreUrl {
    /// `sqlite:///abs/path.db` (absolute) or `sqlite://rel/path.db` (relative).
    Sqlite { path: String },
    /// `scylla://host[:port][,host[:port]...][/keyspace]`.
    Scylla {
        nodes: Vec<String>,
        keyspace: String,
    },
}

impl StoreUrl {
    pub(crate) fn parse(url: &str) -> Result<StoreUrl, StoreError> {
        let invalid = |reason: &str| StoreError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(invalid("missing database file path"));
            }
            return Ok(StoreUrl::Sqlite {
                path: path.to_owned(),
            });
        }
        let Some(rest) = url.strip_prefix("scylla://") else {
            return Err(invalid("expected a `sqlite://` or `scylla://` URL"));
        };
        let (hosts, keyspace) = rest.split_once('/').unwrap_or((rest, ""));
        let keyspace = match keyspace.trim_end_matches('/') {
            "" => DEFAULT_KEYSPACE,
            name if is_cql_identifier(name) => name,
            _ => {
                return Err(invalid(
                    "keyspace must be 1-48 ASCII letters, digits or `_`, starting with a letter",
                ));
            }
        };
        let nodes = hosts
            .split(',')
            .map(|host| {
                with_default_port(host).ok_or_else(|| invalid(&format!("bad host `{host}`")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StoreUrl::Scylla {
            nodes,
            keyspace: keyspace.to_owned(),
        })
    }
}

/// `host` or `host:port` (IPv6 literals in brackets) to `host:port`.
fn with_default_port(host: &str) -> Option<String> {
    if host.is_empty() {
        return None;
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') || name.starts_with('[') => {
            (!name.is_empty() && port.parse::<u16>().is_ok()).then(|| host.to_owned())
        }
        Some(_) => None,
        None => Some(format!("{host}:{DEFAULT_CQL_PORT}")),
    }
}

/// Keyspace names are spliced into CQL text, so they are checked strictly.
pub(crate) fn is_cql_identifier(name: &str) -> bool {
    (1..=48).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scylla(nodes: &[&str], keyspace: &str) -> StoreUrl {
        StoreUrl::Scylla {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            keyspace: keyspace.to_owned(),
        }
    }

    #[test]
    fn sqlite_paths_absolute_and_relative() {
        assert_eq!(
            StoreUrl::parse("sqlite:///var/lib/tidings.db").ok(),
            Some(StoreUrl::Sqlite {
                path: "/var/lib/tidings.db".into()
            })
        );
        assert_eq!(
            StoreUrl::parse("sqlite://data/tidings.db").ok(),
            Some(StoreUrl::Sqlite {
                path: "data/tidings.db".into()
            })
        );
    }

    #[test]
    fn scylla_hosts_ports_and_keyspace() {
        assert_eq!(
            StoreUrl::parse("scylla://a:9000,b/feeds").ok(),
            Some(scylla(&["a:9000", "b:9042"], "feeds"))
        );
        assert_eq!(
            StoreUrl::parse("scylla://10.0.0.1").ok(),
            Some(scylla(&["10.0.0.1:9042"], "tidings"))
        );
        assert_eq!(
            StoreUrl::parse("scylla://[::1]:19042/").ok(),
            Some(scylla(&["[::1]:19042"], "tidings"))
        );
    }

    #[test]
    fn bad_urls_name_the_url() {
        for url in [
            "postgres://x/y",
            "sqlite://",
            "scylla://",
            "scylla://a,,b",
            "scylla://a:notaport",
            "scylla://a/bad-keyspace",
            "scylla://a/x;DROP",
        ] {
            let err = StoreUrl::parse(url).expect_err(url).to_string();
            assert!(err.contains(url), "{err}");
        }
    }
}
