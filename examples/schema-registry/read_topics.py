#!/usr/bin/env python3
"""Reads tidings' topics with Confluent's own Avro deserializer.

The gateway serves a read-only Confluent-compatible schema-registry API for
the built-in schema ids at http://<gateway http>/schema-registry
(docs/schemas.md). Any Confluent client pointed at it decodes the topics
without a registry deployment; this script is confluent-kafka's
SchemaRegistryClient and AvroDeserializer doing so.

    # every subject, with its latest version's id
    python3 read_topics.py subjects --registry http://127.0.0.1:8080/schema-registry
    # one schema by id (exit status 1 and Confluent's error body if unknown)
    python3 read_topics.py schema --registry ... --id 4
    # the records of topics, one JSON object a line, read to their high
    # watermarks as of the start
    python3 read_topics.py read --registry ... --bootstrap 127.0.0.1:9092 \\
        tidings.notify.requests tidings.tracking

`read --use-latest` asks the registry for the subject's latest version
(`<topic>-value`, TopicNameStrategy) as the reader schema, as consumers
configured with `use.latest.version` do, instead of using the writer schema
the record's id names.
"""

import argparse
import json
import struct
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def subjects(client, _args):
    for subject in client.get_subjects():
        latest = client.get_latest_version(subject)
        print(json.dumps({"subject": subject, "version": latest.version, "id": latest.schema_id}))


def schema(client, args):
    try:
        found = client.get_schema(args.id)
    except SchemaRegistryError as e:
        print(json.dumps({"http_status": e.http_status_code, "error_code": e.error_code, "message": e.error_message}))
        sys.exit(1)
    print(json.dumps({"id": args.id, "schema_type": found.schema_type, "schema": json.loads(found.schema_str)}))


def read(client, args):
    deserializer = AvroDeserializer(client, conf={"use.latest.version": args.use_latest})
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        # Assigned, never subscribed: the group is only a name librdkafka wants.
        "group.id": "tidings-example-read-topics",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    })
    try:
        high = {}
        for topic in args.topics:
            info = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if info is None or info.error is not None:
                sys.exit(f"cannot read {topic} at {args.bootstrap}: {info.error if info else 'no such topic'}")
            for p in info.partitions:
                low, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                if hi > low:
                    high[(topic, p)] = hi
        consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for (t, p) in high])
        deadline = time.monotonic() + args.timeout
        while high:
            if time.monotonic() > deadline:
                sys.exit(f"timed out after {args.timeout}s; partitions left: {sorted(high)}")
            message = consumer.poll(1.0)
            if message is not None:
                if message.error():
                    raise KafkaException(message.error())
                payload = message.value()
                value = deserializer(payload, SerializationContext(message.topic(), MessageField.VALUE))
                print(json.dumps({
                    "topic": message.topic(),
                    "partition": message.partition(),
                    "offset": message.offset(),
                    "schema_id": struct.unpack(">I", payload[1:5])[0],
                    "value": value,
                }, default=str))
            # Positions, not offsets of records seen: a transaction's commit
            # marker takes an offset no record is delivered for.
            for tp in consumer.position([TopicPartition(t, p) for (t, p) in list(high)]):
                if tp.offset >= high[(tp.topic, tp.partition)]:
                    del high[(tp.topic, tp.partition)]
    finally:
        consumer.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, run in [("subjects", subjects), ("schema", schema), ("read", read)]:
        command = commands.add_parser(name)
        command.set_defaults(run=run)
        command.add_argument("--registry", required=True, help="http://<gateway http>/schema-registry")
        if name == "schema":
            command.add_argument("--id", type=int, required=True)
        if name == "read":
            command.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
            command.add_argument("--use-latest", action="store_true", help="read with the subject's latest version")
            command.add_argument("--timeout", type=float, default=120)
            command.add_argument("topics", nargs="+")
    args = parser.parse_args()
    args.run(SchemaRegistryClient({"url": args.registry}), args)


if __name__ == "__main__":
    main()
