#!/usr/bin/env python3
"""Per-template delivery, open and click rates from tidings' tracking topic.

A batch job: reads every partition of `<prefix>.tracking` from the beginning
up to its high watermark as of the start (what was written before the run),
decodes each record's Confluent wire format (magic byte 0, 4-byte big-endian
schema id, Avro body) with the TrackingEvent schema from schemas/avro/, and
prints, per template, how many of its notifications were sent, delivered,
opened and clicked, and the rates.

The counts are those of `GetTemplateStats`: SENT, DELIVERED, OPENED and
CLICKED events of notifications sent from a template, each event counted once
by its `event_id` (a replayed or repeated tracking record, such as a receipt a
provider posts twice, counts once). Rates are over `sent`; opens and clicks are
events, not distinct notifications, so a message opened twice counts twice
and a rate can pass 100%.

Schemas: the job decodes with fastavro and the .avsc files (no schema
registry), so it needs a checkout of schemas/ at the deployment's version.
With the built-in ids (no kafka.schema_registry_url) a record's id names its
record type, TrackingEvent is id 4 (docs/schemas.md lists them all).

    python3 template_rates.py --bootstrap 127.0.0.1:9092 --prefix tidings
    python3 template_rates.py --bootstrap ... --template welcome --json
"""

import argparse
import io
import json
import pathlib
import struct
import sys
import time

import fastavro
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

# The built-in schema id of TrackingEvent (schemas/src/catalog.rs).
TRACKING_EVENT_ID = 4
COUNTED = {"SENT": "sent", "DELIVERED": "delivered", "OPENED": "opened", "CLICKED": "clicked"}
DEFAULT_SCHEMAS = pathlib.Path(__file__).resolve().parents[2] / "schemas" / "avro"


class WireFormatError(ValueError):
    """A record that is not a TrackingEvent in the Confluent wire format."""


def load_schema(schemas_dir):
    path = pathlib.Path(schemas_dir) / "tracking_event.avsc"
    try:
        with open(path, encoding="utf-8") as f:
            return fastavro.parse_schema(json.load(f))
    except OSError as e:
        sys.exit(f"cannot read {path}: {e} (--schemas names the directory of tidings' .avsc files)")


def decode(payload, schema):
    """The TrackingEvent in one record's value."""
    if payload is None or len(payload) < 5:
        raise WireFormatError(f"{0 if payload is None else len(payload)} bytes, shorter than the 5-byte header")
    magic, schema_id = struct.unpack(">bI", payload[:5])
    if magic != 0:
        raise WireFormatError(f"magic byte {magic}, not 0")
    if schema_id != TRACKING_EVENT_ID:
        raise WireFormatError(
            f"schema id {schema_id}, not TrackingEvent's {TRACKING_EVENT_ID} "
            "(is kafka.schema_registry_url set? then the ids are that registry's)"
        )
    return fastavro.schemaless_reader(io.BytesIO(payload[5:]), schema)


def read_topic(bootstrap, topic, timeout_s):
    """Yields every record value of `topic` written before the call."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        # Assigned, never subscribed: the group is only a name librdkafka wants.
        "group.id": "tidings-analytics-template-rates",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    })
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        info = metadata.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            reason = info.error if info is not None and info.error is not None else "no such topic"
            sys.exit(f"cannot read {topic} at {bootstrap}: {reason}")
        high = {}
        for p in info.partitions:
            low, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if hi > low:
                high[p] = hi
        if not high:
            return
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in high])
        deadline = time.monotonic() + timeout_s
        while high:
            if time.monotonic() > deadline:
                sys.exit(f"timed out after {timeout_s}s reading {topic}; partitions left: {sorted(high)}")
            message = consumer.poll(1.0)
            if message is not None:
                if message.error():
                    raise KafkaException(message.error())
                yield message.value()
            # Positions, not offsets of records seen: a transaction's commit
            # marker takes an offset no record is delivered for.
            for tp in consumer.position([TopicPartition(topic, p) for p in list(high)]):
                if tp.offset >= high[tp.partition]:
                    del high[tp.partition]
    finally:
        consumer.close()


def count(values, schema, templates=None):
    """Counts per template, each event id once; returns (stats, skipped)."""
    seen = set()
    stats = {}
    skipped = 0
    for value in values:
        try:
            event = decode(value, schema)
        except (WireFormatError, EOFError, ValueError) as e:
            skipped += 1
            print(f"skipping a record: {e}", file=sys.stderr)
            continue
        template = event.get("template_name")
        label = COUNTED.get(event["kind"])
        if template is None or label is None or (templates and template not in templates):
            continue
        if event["event_id"] in seen:
            continue
        seen.add(event["event_id"])
        counts = stats.setdefault(template, dict.fromkeys(COUNTED.values(), 0))
        counts[label] += 1
    return stats, skipped


def with_rates(counts):
    sent = counts["sent"]
    rate = lambda n: round(n / sent, 4) if sent else None  # noqa: E731
    return {
        **counts,
        "delivery_rate": rate(counts["delivered"]),
        "open_rate": rate(counts["opened"]),
        "click_rate": rate(counts["clicked"]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers (tidings dev logs its embedded one)")
    parser.add_argument("--prefix", default="tidings", help="kafka.topic_prefix of the deployment (default: tidings)")
    parser.add_argument("--schemas", default=str(DEFAULT_SCHEMAS), help="directory of tidings' .avsc files")
    parser.add_argument("--template", action="append", help="only this template (repeatable)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to read the topic before giving up")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    schema = load_schema(args.schemas)
    topic = f"{args.prefix}.tracking"
    stats, skipped = count(read_topic(args.bootstrap, topic, args.timeout), schema, set(args.template or []))
    rows = {name: with_rates(c) for name, c in sorted(stats.items())}
    if args.json:
        print(json.dumps({"topic": topic, "skipped": skipped, "templates": rows}, indent=2))
        return
    pct = lambda r: "-" if r is None else f"{100 * r:.1f}%"  # noqa: E731
    print(f"{'template':<32} {'sent':>7} {'delivered':>9} {'opened':>7} {'clicked':>7} {'delivery':>9} {'open':>7} {'click':>7}")
    for name, r in rows.items():
        print(
            f"{name:<32} {r['sent']:>7} {r['delivered']:>9} {r['opened']:>7} {r['clicked']:>7} "
            f"{pct(r['delivery_rate']):>9} {pct(r['open_rate']):>7} {pct(r['click_rate']):>7}"
        )
    if skipped:
        print(f"({skipped} records skipped: not TrackingEvents in the Confluent wire format)", file=sys.stderr)


if __name__ == "__main__":
    main()
