//! The engines a store test runs on, one fixture each, and the macro that
//! instantiates a test written against `&Store` for both:
//!
//! - SQLite: a fresh database file in a temporary directory per test.
//! - Scylla/Cassandra: the CQL address in `TIDINGS_TEST_CQL` (default
//!   `127.0.0.1:19042`, started by `scripts/servers.sh up`), keyspace
//!   `tidings_test`. Tests share the keyspace and isolate themselves with
//!   unique ids, so they run in parallel.

use tidings_store::{Store, StoreError, StoreOptions};

/// A store plus whatever must outlive it (the SQLite temp dir).
pub struct Fixture {
    pub store: Store,
    _dir: Option<tempfile::TempDir>,
}

pub async fn sqlite_fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("tidings.db").display());
    let store = Store::connect(&url, &StoreOptions::default())
        .await
        .expect("open sqlite store");
    Fixture {
        store,
        _dir: Some(dir),
    }
}

pub fn scylla_url() -> String {
    let address =
        std::env::var("TIDINGS_TEST_CQL").unwrap_or_else(|_| "127.0.0.1:19042".to_owned());
    format!("scylla://{address}/tidings_test")
}

/// Schema changes must not race each other (Cassandra can end up with
/// conflicting table ids), so one test per binary migrates and the others
/// wait (migrators in other binaries wait for the store's migration lease);
/// each `#[tokio::test]` has its own runtime, hence a fresh session per
/// test.
static SCHEMA: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

pub async fn scylla_fixture() -> Fixture {
    let url = scylla_url();
    let unreachable = |e: StoreError| -> ! {
        panic!(
            "Cassandra/Scylla at {url} is not usable: {e}\nStart it with `scripts/servers.sh up` (or point TIDINGS_TEST_CQL at a CQL server)."
        )
    };
    SCHEMA
        .get_or_init(|| async {
            Store::connect(&url, &StoreOptions::default())
                .await
                .unwrap_or_else(|e| unreachable(e));
        })
        .await;
    let opts = StoreOptions {
        migrate: false,
        ..StoreOptions::default()
    };
    let store = Store::connect(&url, &opts)
        .await
        .unwrap_or_else(|e| unreachable(e));
    Fixture { store, _dir: None }
}

/// Instantiates every test (an `async fn(&Store)`) for both engines.
#[macro_export]
macro_rules! on_both_engines {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    let fixture = $crate::engines::sqlite_fixture().await;
                    assert_eq!(fixture.store.backend_name(), "sqlite");
                    super::$test(&fixture.store).await;
                }
            )*
        }
        mod scylla {
            $(
                #[tokio::test]
                async fn $test() {
                    let fixture = $crate::engines::scylla_fixture().await;
                    assert_eq!(fixture.store.backend_name(), "scylla");
                    super::$test(&fixture.store).await;
                }
            )*
        }
    };
}
