"""A Terminus backend in Python: implements UplinkReceiver.Deliver and accepts every message.

Generate the stubs once (see docs/backend.md):
    python -m grpc_tools.protoc -I Protos --python_out=gen --grpc_python_out=gen Protos/terminus/v1/uplink.proto
Run:
    PYTHONPATH=gen python backend.py --port 50051
Each accepted message is printed as one line: RECEIVED <delivery_id> <topic> <payload as UTF-8>.
"""
import argparse
import logging
import sys
import threading
from concurrent import futures

import grpc

from terminus.v1 import uplink_pb2, uplink_pb2_grpc


class Receiver(uplink_pb2_grpc.UplinkReceiverServicer):
    """The one method a backend implements: answer one result per message, in order."""

    def __init__(self):
        # Deliver runs on several threads at once: keep each output line whole.
        self.lock = threading.Lock()

    def Deliver(self, request, context):
        results = []
        for message in request.messages:
            # Deduplicate on message.delivery_id if duplicates matter to you: delivery is at
            # least once, so a message can arrive again after a timeout or a gateway restart.
            line = "RECEIVED %s %s %s\n" % (
                message.delivery_id,
                message.topic,
                message.payload.decode("utf-8", "replace"),
            )
            with self.lock:
                sys.stdout.write(line)
                sys.stdout.flush()
            results.append(uplink_pb2.DeliverResult(status=uplink_pb2.DeliverResult.STATUS_ACCEPTED))
            # To refuse: DeliverResult(status=STATUS_REJECTED, reason="...", retryable=True or False)
        return uplink_pb2.DeliverResponse(results=results)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    uplink_pb2_grpc.add_UplinkReceiverServicer_to_server(Receiver(), server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    if port == 0:
        sys.exit(f"cannot listen on {args.host}:{args.port}")
    server.start()
    print(f"LISTENING {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
