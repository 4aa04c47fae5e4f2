//! Ids derived from what they name, so a retry or a replay derives the same
//! one, and that sort by time when what they name carries a time.
//!
//! A name-based UUID (v5) is a hash: the rows a store keys by it land at
//! random places in its B-trees, and every batch of new rows dirties about
//! one page per row (SQLite writes each dirty page whole to its WAL, and
//! copies it again at the checkpoint). When the name includes an id minted
//! in time order (a UUIDv7 event id, as the gateway mints when the caller
//! gives none, or a post id), [`time_ordered`] keeps the hash but leads with
//! that id's time: the same inputs still give the same id, and a batch's new
//! rows share a few pages at the end of the tree.

use uuid::Uuid;

/// The id of `name` in `namespace`: a UUIDv8 whose first 48 bits are the
/// milliseconds of `time_source` when that is a time-based UUID (v1, v6,
/// v7, or a v8 laid out as this one), and whose other bits are those of the
/// UUIDv5 of `name`; that UUIDv5 itself when `time_source` carries no time.
///
/// Deterministic: the time comes from an input, never from the clock.
pub fn time_ordered(namespace: &Uuid, name: &[u8], time_source: &str) -> Uuid {
    let hashed = Uuid::new_v5(namespace, name);
    match millis_of(time_source) {
        Some(millis) => {
            let mut bytes = *hashed.as_bytes();
            bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
            // Sets the version (8) and variant bits over the hash's.
            Uuid::new_v8(bytes)
        }
        None => hashed,
    }
}

/// The Unix milliseconds an id was minted at, when it is a time-based
/// UUID; for a v8 the first 48 bits, as [`time_ordered`] lays them out (a
/// foreign v8 gives some other 48 bits: still the same ones every time).
pub fn millis_of(id: &str) -> Option<u64> {
    let id = Uuid::try_parse(id).ok()?;
    match id.get_version_num() {
        8 => {
            let mut millis = [0; 8];
            millis[2..].copy_from_slice(&id.as_bytes()[..6]);
            Some(u64::from_be_bytes(millis))
        }
        _ => {
            // A caller's v1 or v6 from before 1970 wraps around in uuid's
            // conversion: any value serves as a lead, and none may overflow.
            let (secs, nanos) = id.get_timestamp()?.to_unix();
            Some(
                secs.saturating_mul(1000)
                    .saturating_add(u64::from(nanos / 1_000_000)),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: Uuid = Uuid::from_u128(0x7469_6469_6e67_7300_8000_0000_0000_00ff);

    #[test]
    fn a_time_based_source_leads_with_its_millis_and_the_rest_is_the_hash() {
        let event = Uuid::now_v7();
        let id = time_ordered(&NS, b"app\0event\0user", &event.to_string());
        assert_eq!(id.get_version_num(), 8);
        assert_eq!(
            millis_of(&id.to_string()),
            millis_of(&event.to_string()),
            "the id carries the event's time"
        );
        let v5 = Uuid::new_v5(&NS, b"app\0event\0user");
        // Byte 6 holds the version and byte 8 the variant; the rest is hash.
        assert_eq!(id.as_bytes()[7], v5.as_bytes()[7]);
        assert_eq!(id.as_bytes()[9..], v5.as_bytes()[9..]);
        assert_eq!(
            id,
            time_ordered(&NS, b"app\0event\0user", &event.to_string())
        );
        assert_ne!(
            id,
            time_ordered(&NS, b"app\0event\0other", &event.to_string())
        );
    }

    #[test]
    fn ids_sort_as_their_sources_do() {
        let ids: Vec<String> = (0..3_u64)
            .map(|i| {
                let ms = 1_796_000_000_000 + i * 5;
                let source = Uuid::new_v7(uuid::Timestamp::from_unix(
                    uuid::NoContext,
                    ms / 1000,
                    (ms % 1000) as u32 * 1_000_000,
                ));
                assert_eq!(millis_of(&source.to_string()), Some(ms));
                // Names that hash the other way round.
                time_ordered(&NS, format!("{}", 9 - i).as_bytes(), &source.to_string()).to_string()
            })
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn any_time_a_caller_can_write_gives_an_id() {
        // v1 and v6 at the Gregorian epoch (before Unix's) and at the end
        // of their range, v7 and v8 at both ends of theirs.
        for source in [
            "00000000-0000-1000-8000-000000000000",
            "ffffffff-ffff-1fff-bfff-ffffffffffff",
            "00000000-0000-6000-8000-000000000000",
            "ffffffff-ffff-6fff-bfff-ffffffffffff",
            "00000000-0000-7000-8000-000000000000",
            "ffffffff-ffff-7fff-bfff-ffffffffffff",
            "ffffffff-ffff-8fff-bfff-ffffffffffff",
        ] {
            assert!(millis_of(source).is_some(), "{source}");
            let id = time_ordered(&NS, b"name", source);
            assert_eq!(id.get_version_num(), 8, "{source}");
            assert_eq!(id, time_ordered(&NS, b"name", source), "{source}");
        }
    }

    #[test]
    fn any_other_source_gives_the_name_based_uuid() {
        for source in ["bench-17", "", "550e8400-e29b-41d4-a716-446655440000"] {
            assert_eq!(millis_of(source), None, "{source}");
            assert_eq!(
                time_ordered(&NS, b"name", source),
                Uuid::new_v5(&NS, b"name")
            );
        }
    }
}
