#!/usr/bin/env python3
"""Creates a room as one user with a second member, and posts into it as a
bot, mentioning the second member: enough to see Watch and webhooks move.

    PARLEY_SERVICES_CREDENTIAL=... python3 docs/examples/post.py --target 127.0.0.1:50052
"""

import argparse
import os
import sys
import uuid

import grpc

sys.path.insert(0, os.path.dirname(__file__))
from watch import load_stubs  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50052")
    parser.add_argument("--owner", default="ada")
    parser.add_argument("--member", default="bob")
    parser.add_argument("--room", help="post into this room instead of creating one")
    parser.add_argument("--text", default="deploy finished")
    args = parser.parse_args()
    credential = os.environ["PARLEY_SERVICES_CREDENTIAL"]
    pb, rpc = load_stubs()
    channel = grpc.insecure_channel(args.target)
    grpc.channel_ready_future(channel).result(timeout=30)
    auth = [("authorization", f"Bearer {credential}")]
    room = args.room
    if not room:
        chat = rpc.ChatServiceStub(channel)
        created = chat.CreateRoom(
            pb.CreateRoomRequest(name=f"demo-{uuid.uuid4().hex[:8]}", visibility=pb.VISIBILITY_PRIVATE, members=[args.member]),
            metadata=auth + [("x-parley-user-id", args.owner), ("x-parley-user-name", args.owner)],
        )
        room = created.room.id
        # Naming a member invites them; the member accepts (here the shared
        # credential acts for them, as the edge would for their connection).
        chat.AcceptInvitation(
            pb.InvitationRequest(room_id=room),
            metadata=auth + [("x-parley-user-id", args.member), ("x-parley-user-name", args.member)],
        )
    backend = rpc.ChatBackendServiceStub(channel)
    backend.PostMessage(
        pb.PostMessageRequest(
            room_id=room,
            sender=pb.User(id="bot:deploy", name="Deploy bot"),
            text=f"@{args.member} {args.text}",
            client_msg_id=uuid.uuid4().hex,
        ),
        metadata=auth,
    )
    print(room)


if __name__ == "__main__":
    main()
