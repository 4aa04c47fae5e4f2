//! SQLite's own page cache (pcache1), wrapped so that a B-tree page swap
//! does not make every later commit walk the whole cache.
//!
//! When a B-tree split puts its new pages in ascending order
//! (`balance_nonroot`), SQLite swaps two pages' numbers through a
//! temporary one: the number of the lock-byte page at 1 GiB (262,145 with
//! 4 KiB pages), which no database uses. pcache1 remembers the largest page
//! number it ever held, and each commit drops the cached pages above the
//! database's size: when that largest number is more than the cache's hash
//! table size above it, pcache1 walks the whole table. So in a database
//! under 1 GiB every commit after a swap walked every cached page. Seen
//! under an iOS burst with the 32 MiB cache (perf, uprobes on pcache1): 121
//! whole walks a second, each of 4,096 slots and ~4,000 pages, 2.4% of the
//! process's CPU, growing with the cache.
//!
//! The wrapper passes everything through, except that a page parked under
//! the lock-byte page's number is parked in pcache1 under the number just
//! above the largest it holds: its remembered largest stays near the
//! database's size, and a commit's truncation looks at a few slots.
//!
//! Installed once per process, before SQLite initialises
//! ([`install`]); where SQLite was initialised already (another library
//! opened a database first) it is left as it is.

use std::{
    ffi::{c_int, c_uint, c_void},
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use rusqlite::ffi::{
    SQLITE_CONFIG_GETPCACHE2, SQLITE_CONFIG_PCACHE2, SQLITE_OK, sqlite3_config, sqlite3_pcache,
    sqlite3_pcache_methods2, sqlite3_pcache_page,
};

/// The lock byte's offset (SQLite's `PENDING_BYTE`, fixed by the file
/// format).
const PENDING_BYTE: u32 = 0x4000_0000;

/// pcache1's methods, as SQLite configured them before we wrapped them.
struct Inner(sqlite3_pcache_methods2);

// SAFETY: the methods are plain function pointers and pcache1's argument
// (null), set once before SQLite starts and only read after.
unsafe impl Send for Inner {}
unsafe impl Sync for Inner {}

/// Set before the wrapper is handed to SQLite, which may call it at once.
static INNER: OnceLock<Inner> = OnceLock::new();

static INSTALLED: OnceLock<bool> = OnceLock::new();

/// Pages parked elsewhere than the lock-byte page's number, for tests.
static PARKED: AtomicU64 = AtomicU64::new(0);

/// Wraps SQLite's page cache, once per process; false when SQLite had
/// started already (and keeps its own cache unwrapped).
pub fn install() -> bool {
    *INSTALLED.get_or_init(|| {
        let mut inner = std::mem::MaybeUninit::<sqlite3_pcache_methods2>::zeroed();
        // SAFETY: sqlite3_config before sqlite3_initialize; both calls are
        // refused (SQLITE_MISUSE) once SQLite has started. The OnceLock
        // keeps two threads of ours from configuring at once, and every
        // database this process opens is opened after this (`Db::open`).
        unsafe {
            if sqlite3_config(SQLITE_CONFIG_GETPCACHE2, inner.as_mut_ptr()) != SQLITE_OK {
                return false;
            }
            let inner = inner.assume_init();
            let wrapped = sqlite3_pcache_methods2 {
                iVersion: inner.iVersion,
                pArg: std::ptr::null_mut(),
                xInit: Some(init),
                xShutdown: Some(shutdown),
                xCreate: Some(create),
                xCachesize: Some(cache_size),
                xPagecount: Some(page_count),
                xFetch: Some(fetch),
                xUnpin: Some(unpin),
                xRekey: Some(rekey),
                xTruncate: Some(truncate),
                xDestroy: Some(destroy),
                xShrink: Some(shrink),
            };
            if INNER.set(Inner(inner)).is_err() {
                return false;
            }
            // SQLite copies the struct.
            sqlite3_config(
                SQLITE_CONFIG_PCACHE2,
                &wrapped as *const sqlite3_pcache_methods2,
            ) == SQLITE_OK
        }
    })
}

fn inner() -> &'static sqlite3_pcache_methods2 {
    // SQLite calls the wrapper only after `install` set this.
    &INNER
        .get()
        .expect("page cache methods called before they were installed")
        .0
}

/// One wrapped cache (one per connection and database).
struct Cache {
    inner: *mut sqlite3_pcache,
    /// The lock-byte page's number at this cache's page size.
    lock_page: c_uint,
    /// At least every page number the inner cache holds.
    top: c_uint,
    /// While a page is parked under `lock_page`: its number in the inner
    /// cache; 0 otherwise (no page is number 0).
    parked: c_uint,
}

impl Cache {
    /// The inner cache's number for `key`.
    fn key(&self, key: c_uint) -> c_uint {
        if key == self.lock_page && self.parked != 0 {
            self.parked
        } else {
            key
        }
    }
}

/// # Safety
/// `p` is a pointer [`create`] returned and [`destroy`] has not freed.
unsafe fn cache<'a>(p: *mut sqlite3_pcache) -> &'a mut Cache {
    // SAFETY: as the caller promises; SQLite calls one cache's methods
    // from one connection at a time.
    unsafe { &mut *(p as *mut Cache) }
}

unsafe extern "C" fn init(_: *mut c_void) -> c_int {
    let inner = inner();
    match inner.xInit {
        // SAFETY: pcache1's own initialisation with its own argument.
        Some(f) => unsafe { f(inner.pArg) },
        None => SQLITE_OK,
    }
}

unsafe extern "C" fn shutdown(_: *mut c_void) {
    let inner = inner();
    if let Some(f) = inner.xShutdown {
        // SAFETY: as in `init`.
        unsafe { f(inner.pArg) }
    }
}

unsafe extern "C" fn create(
    page_size: c_int,
    extra: c_int,
    purgeable: c_int,
) -> *mut sqlite3_pcache {
    let Some(f) = inner().xCreate else {
        return std::ptr::null_mut();
    };
    // SAFETY: pcache1's constructor with SQLite's arguments.
    let created = unsafe { f(page_size, extra, purgeable) };
    if created.is_null() {
        return created;
    }
    let lock_page = PENDING_BYTE / c_uint::try_from(page_size.max(1)).unwrap_or(1) + 1;
    Box::into_raw(Box::new(Cache {
        inner: created,
        lock_page,
        top: 0,
        parked: 0,
    }))
    .cast()
}

unsafe extern "C" fn cache_size(p: *mut sqlite3_pcache, pages: c_int) {
    // SAFETY: `p` is one of ours (SQLite passes back what `create` gave).
    let c = unsafe { cache(p) };
    if let Some(f) = inner().xCachesize {
        // SAFETY: the inner cache `create` made for it.
        unsafe { f(c.inner, pages) }
    }
}

unsafe extern "C" fn page_count(p: *mut sqlite3_pcache) -> c_int {
    // SAFETY: as in `cache_size`.
    let c = unsafe { cache(p) };
    // SAFETY: as in `cache_size`.
    inner().xPagecount.map_or(0, |f| unsafe { f(c.inner) })
}

unsafe extern "C" fn fetch(
    p: *mut sqlite3_pcache,
    key: c_uint,
    create: c_int,
) -> *mut sqlite3_pcache_page {
    // SAFETY: as in `cache_size`.
    let c = unsafe { cache(p) };
    let key = c.key(key);
    if create != 0 {
        c.top = c.top.max(key);
    }
    // SAFETY: as in `cache_size`.
    inner()
        .xFetch
        .map_or(std::ptr::null_mut(), |f| unsafe { f(c.inner, key, create) })
}

unsafe extern "C" fn unpin(p: *mut sqlite3_pcache, page: *mut sqlite3_pcache_page, discard: c_int) {
    // SAFETY: as in `cache_size`.
    let c = unsafe { cache(p) };
    if let Some(f) = inner().xUnpin {
        // SAFETY: as in `cache_size`; `page` is the inner cache's.
        unsafe { f(c.inner, page, discard) }
    }
}

unsafe extern "C" fn rekey(
    p: *mut sqlite3_pcache,
    page: *mut sqlite3_pcache_page,
    old: c_uint,
    new: c_uint,
) {
    // SAFETY: as in `cache_size`.
    let c = unsafe { cache(p) };
    let old = c.key(old);
    if old == c.parked {
        c.parked = 0;
    }
    let new = if new == c.lock_page {
        // Parked just above every number the inner cache holds, so free.
        c.parked = c.top.saturating_add(1);
        PARKED.fetch_add(1, Ordering::Relaxed);
        c.parked
    } else {
        new
    };
    c.top = c.top.max(new);
    if let Some(f) = inner().xRekey {
        // SAFETY: as in `unpin`.
        unsafe { f(c.inner, page, old, new) }
    }
}

unsafe extern "C" fn truncate(p: *mut sqlite3_pcache, limit: c_uint) {
    // SAFETY: as in `cache_size`.
    let c = unsafe { cache(p) };
    if let Some(f) = inner().xTruncate {
        // SAFETY: as in `cache_size`.
        unsafe { f(c.inner, limit) }
    }
    // Every page numbered `limit` or more is gone.
    c.top = c.top.min(limit.saturating_sub(1));
}

unsafe extern "C" fn destroy(p: *mut sqlite3_pcache) {
    // SAFETY: `p` came from `create`'s Box and SQLite destroys it once.
    let c = unsafe { Box::from_raw(p as *mut Cache) };
    if let Some(f) = inner().xDestroy {
        // SAFETY: the inner cache, destroyed once with its wrapper.
        unsafe { f(c.inner) }
    }
}

unsafe extern "C" fn shrink(p: *mut sqlite3_pcache) {
    // SAFETY: as in `cache_size`.
    let c = unsafe { cache(p) };
    if let Some(f) = inner().xShrink {
        // SAFETY: as in `cache_size`.
        unsafe { f(c.inner) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_pages_park_beside_the_cache_and_the_database_stays_sound() {
        assert!(
            install(),
            "SQLite started before the page cache was wrapped"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = rusqlite::Connection::open(dir.path().join("splits.db")).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID;",
        )
        .expect("schema");
        let before = PARKED.load(Ordering::Relaxed);
        // Keys in no order: splits all over the tree, some of which swap
        // page numbers.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..40 {
            conn.execute_batch("BEGIN").expect("begin");
            for _ in 0..250 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                conn.execute(
                    "INSERT INTO t (k, v) VALUES (?1, ?2)",
                    (format!("{x:016x}"), "v".repeat(120)),
                )
                .expect("insert");
            }
            conn.execute_batch("COMMIT").expect("commit");
        }
        assert!(
            PARKED.load(Ordering::Relaxed) > before,
            "no page swap went through the wrapper"
        );
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity check");
        assert_eq!(check, "ok");
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 10_000);
    }
}
