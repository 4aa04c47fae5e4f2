//! The schema-evolution rule: BACKWARD_TRANSITIVE. Every schema in
//! `schemas/avro/` must read data written with every earlier version of it
//! kept in `schemas/avro/history/<name>/v<N>.avsc`, so consumers can be
//! upgraded before producers and a topic's old records stay readable for its
//! whole retention. When you change a schema, first copy the current file to
//! the next `v<N>.avsc`; then add fields only with defaults, and never remove
//! a field without a default or change a type incompatibly.

use std::{fs, path::Path};

use apache_avro::{Schema, schema_compatibility::SchemaCompatibility};
use tidings_schemas::CATALOG;

fn avro_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/avro"))
}

fn history_of(file: &str) -> Vec<(String, Schema)> {
    let stem = file.trim_end_matches(".avsc");
    let dir = avro_dir().join("history").join(stem);
    let mut versions: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{} needs a history folder {}: {e}", file, dir.display()))
        .map(|e| e.expect("readable history entry").path())
        .collect();
    versions.sort();
    versions
        .into_iter()
        .map(|p| {
            let text = fs::read_to_string(&p).expect("readable schema");
            let schema = Schema::parse_str(&text)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", p.display()));
            (p.display().to_string(), schema)
        })
        .collect()
}

#[test]
fn current_schemas_read_every_earlier_version() {
    for entry in CATALOG {
        let current = Schema::parse_str(entry.source).expect("catalog schema parses");
        let history = history_of(entry.file);
        assert!(
            !history.is_empty(),
            "{} has no recorded versions",
            entry.file
        );
        for (path, old) in history {
            SchemaCompatibility::can_read(&old, &current).unwrap_or_else(|e| {
                panic!("{} cannot read data written with {path}: {e}", entry.file)
            });
        }
    }
}

#[test]
fn the_files_on_disk_are_the_ones_compiled_in() {
    for entry in CATALOG {
        let on_disk = fs::read_to_string(avro_dir().join(entry.file)).expect("schema file");
        assert_eq!(on_disk, entry.source, "{} changed; rebuild", entry.file);
    }
}

/// The check above must be able to fail: a field added without a default is
/// a breaking change for readers of old data.
#[test]
fn a_field_without_a_default_is_rejected() {
    let v1 = Schema::parse_str(
        r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#,
    )
    .unwrap();
    let breaking = Schema::parse_str(
        r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"int"}]}"#,
    )
    .unwrap();
    let compatible = Schema::parse_str(
        r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"int","default":0}]}"#,
    )
    .unwrap();
    assert!(SchemaCompatibility::can_read(&v1, &breaking).is_err());
    assert!(SchemaCompatibility::can_read(&v1, &compatible).is_ok());
}
