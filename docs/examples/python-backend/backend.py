"""A Terminus backend in Python: implements UplinkReceiver.Deliver (a bidirectional stream of
batches) and accepts every message. Uses grpc.aio, so any number of gateway streams is served
by one thread without a worker pool to size.

Generate the stubs once (see docs/backend.md):
    python -m grpc_tools.protoc -I Protos --python_out=gen --grpc_python_out=gen Protos/terminus/v1/uplink.proto
Run:
    PYTHONPATH=gen python backend.py --port 50051
Each accepted message is printed as one line: RECEIVED <delivery_id> <topic> <payload as UTF-8>.
With --quiet it only counts them, and prints RECEIVED_TOTAL <count> every --report-seconds: use
that under load, where printing a line per message would cost more than the gateway does.
"""
import argparse
import asyncio
import logging
import sys

import grpc

from terminus.v1 import uplink_pb2, uplink_pb2_grpc


class Receiver(uplink_pb2_grpc.UplinkReceiverServicer):
    """The one method a backend implements.

    Each gateway holds a few long-lived Deliver streams open; each request on a stream is one
    batch. Answer every batch with its batch_id and one result per message, in message order.
    """

    def __init__(self, delay_seconds=0.0, quiet=False):
        self.delay_seconds = delay_seconds
        self.quiet = quiet
        self.total = 0

    async def Deliver(self, request_iterator, context):
        async for batch in request_iterator:
            results = []
            for message in batch.messages:
                # Deduplicate on message.delivery_id (the gateway's retries) and on
                # (message.device_id, message.idempotency_key) (the device's resends) if
                # duplicates matter to you: delivery is at least once.
                self.total += 1
                if not self.quiet:
                    sys.stdout.write(
                        "RECEIVED %s %s %s\n"
                        % (message.delivery_id, message.topic, message.payload.decode("utf-8", "replace"))
                    )
                results.append(uplink_pb2.DeliverResult(status=uplink_pb2.DeliverResult.STATUS_ACCEPTED))
                # To refuse: DeliverResult(status=STATUS_REJECTED, reason="...", retryable=True or False)
            # Accepted means "stored": flush (or commit) before answering.
            sys.stdout.flush()
            if self.delay_seconds:
                await asyncio.sleep(self.delay_seconds)
            yield uplink_pb2.DeliverResponse(batch_id=batch.batch_id, results=results)


async def report(receiver, seconds):
    """--quiet: one line with the running total every `seconds`."""
    while True:
        await asyncio.sleep(seconds)
        print(f"RECEIVED_TOTAL {receiver.total}", flush=True)


async def serve(host, port, delay_seconds, quiet, report_seconds):
    server = grpc.aio.server()
    receiver = Receiver(delay_seconds, quiet)
    uplink_pb2_grpc.add_UplinkReceiverServicer_to_server(receiver, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        sys.exit(f"cannot listen on {host}:{port}")
    await server.start()
    print(f"LISTENING {bound}", flush=True)
    reporter = asyncio.create_task(report(receiver, report_seconds)) if quiet else None
    await server.wait_for_termination()
    if reporter:
        reporter.cancel()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--delay-ms", type=int, default=0, help="hold each batch this long (a slow backend)")
    parser.add_argument("--quiet", action="store_true", help="count messages instead of printing each")
    parser.add_argument("--report-seconds", type=float, default=10, help="with --quiet: how often to print the total")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    asyncio.run(serve(args.host, args.port, args.delay_ms / 1000, args.quiet, args.report_seconds))


if __name__ == "__main__":
    main()
