#!/usr/bin/env python3
"""Server CPU per resumed TLS 1.3 (or 1.2) handshake (session ticket), read from /proc/PID.

swift-nio-ssl has no client-side session resumption, so terminus-loadgen cannot resume; this
client (Python's ssl, OpenSSL 3) does, against the gateway and HAProxy alike:

    resumed-handshakes.py --target 127.0.0.1:7883 --ca ca.pem --pid PID --count 2000 [--version 1.2|1.3] [--out FILE]

It takes one ticket from a first connection (it sends 5 bytes the gateway answers with
GOAWAY(MALFORMED_FRAME): swift-nio-ssl sends the TLS 1.3 tickets with the first record it
writes), then makes COUNT connections that resume with it, each closed right after the
handshake, and divides the server's CPU time over them by COUNT. Exits non-zero if a
connection does not resume.
"""
import argparse
import json
import os
import socket
import ssl
import sys
import time


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--server-name", default="localhost")
    parser.add_argument("--out")
    parser.add_argument("--label", default="resumed")
    parser.add_argument("--version", choices=["1.2", "1.3"], default="1.3", help="the TLS version, both ways")
    args = parser.parse_args()
    host, port = args.target.rsplit(":", 1)
    context = ssl.create_default_context(cafile=args.ca)
    version = ssl.TLSVersion.TLSv1_3 if args.version == "1.3" else ssl.TLSVersion.TLSv1_2
    context.minimum_version = context.maximum_version = version

    first = context.wrap_socket(socket.create_connection((host, int(port))), server_hostname=args.server_name)
    first.sendall(b"\x00\x00\x00\x01\xff")
    first.settimeout(2)
    deadline = time.time() + 2
    while time.time() < deadline and not (first.session and first.session.has_ticket):
        try:
            if not first.recv(4096):
                break
        except (socket.timeout, ssl.SSLError, OSError):
            break
    session = first.session
    first.close()
    if session is None or not session.has_ticket:
        print(f"{args.label}: the server sent no session ticket", file=sys.stderr)
        return 1

    before = cpu_seconds(args.pid)
    started = time.time()
    not_resumed = 0
    for _ in range(args.count):
        connection = context.wrap_socket(
            socket.create_connection((host, int(port))), server_hostname=args.server_name, session=session
        )
        if not connection.session_reused:
            not_resumed += 1
        connection.close()
    seconds = time.time() - started
    time.sleep(0.3)
    cpu = cpu_seconds(args.pid) - before
    report = {
        "label": args.label,
        "resumedHandshakes": args.count - not_resumed,
        "notResumed": not_resumed,
        "handshakesPerSecond": args.count / seconds,
        "serverCPUMicrosPerHandshake": cpu * 1e6 / args.count,
    }
    print(
        f"{args.label}: {args.count - not_resumed}/{args.count} resumed, {report['handshakesPerSecond']:.0f}/s, "
        f"server CPU {report['serverCPUMicrosPerHandshake']:.0f} µs per resumed handshake"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if not_resumed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
