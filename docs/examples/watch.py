#!/usr/bin/env python3
"""Follows every room's log through parley.chat.v1.ChatBackendService/Watch.

The consumer holds its own position: it stores the position of each event
once the event is processed (here: printed as a JSON line) and resumes from
it after any disconnect or restart, so it sees every event once, in order.
A position the service no longer has answers OUT_OF_RANGE with the oldest
one it does have; this example says so on stderr and goes on from there.

    python3 -m venv .venv && .venv/bin/pip install grpcio grpcio-tools
    PARLEY_SERVICES_CREDENTIAL=... .venv/bin/python docs/examples/watch.py \
        --target 127.0.0.1:50052 --position-file watch.position

The gRPC stubs are generated from proto/ at start (grpcio-tools).
"""

import argparse
import importlib
import json
import os
import pathlib
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parents[2] / "proto"


def load_stubs():
    out = tempfile.mkdtemp(prefix="parley-proto-")
    status = protoc.main(
        [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "parley/chat/v1/chat.proto",
        ]
    )
    if status != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)
    return (
        importlib.import_module("parley.chat.v1.chat_pb2"),
        importlib.import_module("parley.chat.v1.chat_pb2_grpc"),
    )


def read_position(path):
    try:
        return int(pathlib.Path(path).read_text().strip() or 0)
    except FileNotFoundError:
        return 0


def save_position(path, position):
    # Write, then rename: a crash leaves the old position or the new one.
    tmp = f"{path}.tmp"
    pathlib.Path(tmp).write_text(str(position))
    os.replace(tmp, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50052")
    parser.add_argument("--position-file", default="watch.position")
    parser.add_argument("--room", action="append", default=[], help="only this room (repeatable)")
    parser.add_argument("--max-events", type=int, default=0, help="exit after this many (0: never)")
    args = parser.parse_args()
    credential = os.environ["PARLEY_SERVICES_CREDENTIAL"]
    pb, rpc = load_stubs()
    metadata = [("authorization", f"Bearer {credential}")]
    position = read_position(args.position_file)
    seen = 0
    backoff = 0.5
    while True:
        channel = grpc.insecure_channel(args.target)
        stub = rpc.ChatBackendServiceStub(channel)
        try:
            request = pb.WatchRequest(room_ids=args.room, since_position=position)
            for event in stub.Watch(request, metadata=metadata):
                backoff = 0.5
                # Process the event, then remember that it was processed.
                print(
                    json.dumps(
                        {
                            "position": event.position,
                            "room": event.room_id,
                            "seq": event.seq,
                            "kind": event.kind,
                            "event": json.loads(event.json),
                        }
                    ),
                    flush=True,
                )
                position = event.position
                save_position(args.position_file, position)
                seen += 1
                if args.max_events and seen >= args.max_events:
                    return
            print(f"stream ended; resuming from {position}", file=sys.stderr, flush=True)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.OUT_OF_RANGE:
                trailers = dict(error.trailing_metadata() or ())
                oldest = int(trailers["x-parley-oldest-position"])
                print(
                    f"events after {position} are gone ({error.details()}); "
                    f"going on from {oldest}",
                    file=sys.stderr,
                    flush=True,
                )
                position = max(oldest - 1, 0)
                continue
            if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                raise
            print(f"disconnected ({error.code().name}); resuming from {position}", file=sys.stderr, flush=True)
        finally:
            channel.close()
        time.sleep(backoff)
        backoff = min(backoff * 2, 10)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
