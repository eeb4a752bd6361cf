#!/usr/bin/env python3
"""The standard gRPC health check (grpc.health.v1.Health/Check, the whole
server: service "") against each address, as Kubernetes' grpc probe does.
Retries each for up to 30 s; exits non-zero unless every one answers SERVING.
Needs grpcio and grpcio-health-checking.
Usage: grpc_health_check.py [NAME=]HOST:PORT ..."""
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEADLINE_S = 30


def check(address):
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=3)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(addresses):
    failed = False
    for arg in addresses:
        name, _, address = arg.rpartition("=")
        start = time.monotonic()
        while True:
            try:
                status = check(address)
            except grpc.RpcError as e:
                status = f"{e.code().name}: {e.details()}"
            if status == "SERVING" or time.monotonic() - start > DEADLINE_S:
                break
            time.sleep(0.5)
        print(f"grpc health {name or address} ({address}): {status}")
        failed |= status != "SERVING"
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    sys.exit(main(sys.argv[1:]))
