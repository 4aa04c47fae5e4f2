#!/usr/bin/env python3
"""A tidings client in Python: gRPC stubs generated from schemas/proto.

The stubs are not committed: each run generates them with grpcio-tools from
the .proto files of this checkout into a temporary directory, so they always
match the protos they were built from (point --protos elsewhere for another
version).

Notifications, contacts and templates are called as an app (`x-app-key` and
`x-app-secret` metadata, from `tidings apps create`); the feed as a user
(`authorization: Bearer <user token>`, an HS256 JWT your auth service mints
with feed.user_token_secret, or `tidings user-token <user id>` in
development).

    client.py --gateway 127.0.0.1:50051 --app-key K --app-secret S \\
        upsert-user ada --email ada@example.org
    client.py ... send ada --channel email --subject Hi --text "Hello, Ada"
    client.py ... status <notification id>
    client.py --gateway 127.0.0.1:50051 --user-token T publish "First post"
    client.py ... --user-token T2 follow <author id>
    client.py ... --user-token T2 feed

Each command prints its answer as JSON.
"""

import argparse
import importlib
import json
import pathlib
import sys
import tempfile

import grpc
from google.protobuf import json_format
from grpc_tools import protoc

DEFAULT_PROTOS = pathlib.Path(__file__).resolve().parents[2] / "schemas" / "proto"


def generate_stubs(protos):
    """Generates the tidings.v1 modules from `protos` and imports them."""
    protos = pathlib.Path(protos)
    files = sorted(str(p) for p in (protos / "tidings" / "v1").glob("*.proto"))
    if not files:
        sys.exit(f"no .proto files under {protos}/tidings/v1 (--protos names the schemas/proto directory)")
    out = tempfile.mkdtemp(prefix="tidings-stubs-")
    args = ["grpc_tools.protoc", f"-I{protos}", f"--python_out={out}", f"--grpc_python_out={out}", *files]
    if protoc.main(args) != 0:
        sys.exit(f"grpc_tools.protoc failed on {protos}")
    sys.path.insert(0, out)
    load = lambda name: importlib.import_module(f"tidings.v1.{name}")  # noqa: E731
    return {name: load(name) for name in [
        "common_pb2", "contacts_pb2", "contacts_pb2_grpc", "notifications_pb2", "notifications_pb2_grpc",
        "feed_pb2", "feed_pb2_grpc",
    ]}


def show(message):
    print(json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway", required=True, help="the gateway's gRPC address, host:port")
    parser.add_argument("--protos", default=str(DEFAULT_PROTOS), help="the schemas/proto directory")
    parser.add_argument("--app-key", help="for upsert-user, send and status")
    parser.add_argument("--app-secret")
    parser.add_argument("--user-token", help="for publish, follow and feed: the acting user's bearer token")
    commands = parser.add_subparsers(dest="command", required=True)
    c = commands.add_parser("upsert-user")
    c.add_argument("user_id")
    c.add_argument("--email", default="")
    c.add_argument("--phone", default="")
    c.add_argument("--display-name", default="")
    c = commands.add_parser("send", help="a raw notification to one user")
    c.add_argument("user_id")
    c.add_argument("--channel", action="append", default=[], help="ios, android, sms, email, web (repeatable; none: every channel the user has)")
    c.add_argument("--title", default="")
    c.add_argument("--body", default="")
    c.add_argument("--subject", default="", help="the email subject")
    c.add_argument("--text", default="", help="the email and SMS text")
    c = commands.add_parser("status")
    c.add_argument("notification_id")
    c = commands.add_parser("publish", help="a feed post by the token's user")
    c.add_argument("body")
    c = commands.add_parser("follow")
    c.add_argument("user_id")
    c = commands.add_parser("feed", help="the token's user's newest feed page")
    c.add_argument("--limit", type=int, default=20)
    args = parser.parse_args()

    pb = generate_stubs(args.protos)
    channel = grpc.insecure_channel(args.gateway)
    if args.command in ("upsert-user", "send", "status"):
        if not (args.app_key and args.app_secret):
            sys.exit(f"{args.command} needs --app-key and --app-secret")
        metadata = [("x-app-key", args.app_key), ("x-app-secret", args.app_secret)]
    else:
        if not args.user_token:
            sys.exit(f"{args.command} needs --user-token")
        metadata = [("authorization", f"Bearer {args.user_token}")]

    contacts = pb["contacts_pb2_grpc"].ContactServiceStub(channel)
    notifications = pb["notifications_pb2_grpc"].NotificationServiceStub(channel)
    feed = pb["feed_pb2_grpc"].FeedServiceStub(channel)
    n, f, c = pb["notifications_pb2"], pb["feed_pb2"], pb["contacts_pb2"]
    try:
        if args.command == "upsert-user":
            show(contacts.UpsertUser(c.UpsertUserRequest(
                user_id=args.user_id, email=args.email, phone=args.phone, display_name=args.display_name,
            ), metadata=metadata, timeout=10))
        elif args.command == "send":
            channels = [pb["common_pb2"].Channel.Value(f"CHANNEL_{name.upper()}") for name in args.channel]
            raw = n.RawContent(
                title=args.title, body=args.body, email_subject=args.subject, email_text=args.text, sms_text=args.text,
            )
            show(notifications.Send(
                n.SendRequest(user_ids=[args.user_id], channels=channels, raw=raw), metadata=metadata, timeout=10,
            ))
        elif args.command == "status":
            show(notifications.GetStatus(
                n.GetStatusRequest(notification_id=args.notification_id), metadata=metadata, timeout=10,
            ))
        elif args.command == "publish":
            show(feed.Publish(f.PublishRequest(body=args.body), metadata=metadata, timeout=10))
        elif args.command == "follow":
            show(feed.Follow(f.FollowRequest(user_id=args.user_id), metadata=metadata, timeout=10))
        elif args.command == "feed":
            show(feed.GetFeed(f.GetFeedRequest(limit=args.limit), metadata=metadata, timeout=10))
    except grpc.RpcError as e:
        # The gateway names the field at fault; UNAVAILABLE may succeed later.
        print(json.dumps({"code": e.code().name, "message": e.details()}))
        sys.exit(1)


if __name__ == "__main__":
    main()
