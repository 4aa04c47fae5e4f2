#!/usr/bin/env python3
"""Cassandra's own per-table read and write counts for one keyspace, as JSON.

    scripts/cql-table-counts.py KEYSPACE [HOST [PORT]]   (default 127.0.0.1 19042)

Reads system_views.local_read_latency and local_write_latency (Cassandra 4.1
and later), so running it before and after a benchmark gives the database's
view of the statements per notification (docs/benchmarks.md, issue 11).
Needs the DataStax driver: `pip install cassandra-driver` (in a venv).
"""
import json
import sys

from cassandra.cluster import Cluster


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    keyspace = sys.argv[1]
    host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    port = int(sys.argv[3]) if len(sys.argv) > 3 else 19042
    session = Cluster([host], port=port).connect()
    counts = {}
    for view, verb in [("local_read_latency", "read"), ("local_write_latency", "write")]:
        for row in session.execute(f"SELECT keyspace_name, table_name, count FROM system_views.{view}"):
            if row.keyspace_name == keyspace and row.count:
                counts[f"{verb} {row.table_name}"] = row.count
    print(json.dumps(counts, sort_keys=True))


if __name__ == "__main__":
    main()
