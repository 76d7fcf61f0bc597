#!/usr/bin/env python3
"""Chaos run for Terminus (not in CI): attacks and backend failures against a release build,
with RSS, open descriptors and event-loop lag sampled; fails when they grow.

    scripts/chaos.py                  15 minutes (the default)
    scripts/chaos.py --minutes 3      a shorter smoke run
    scripts/chaos.py --no-build       reuse .build/release

What runs at the same time, for the whole run (every loop bounded by the end time):
  - devices that never read their PONGs (new ones every few seconds);
  - one device flooding QoS 0 as fast as it can;
  - devices trickling a frame one byte at a time;
  - HELLOs with bad tokens in a loop (per-address throttling);
  - a valid device reconnecting in a loop;
  - 200 well-behaved devices publishing QoS 1 once a second and reconnecting now and then.
The backend (terminus-echo-backend --quiet) goes through a cycle every 60 s: normal, stalled
(SIGSTOP), normal, killed (SIGKILL, restarted 5 s later), erroring (--fail-every 3), normal.

Sampled every 5 s: gateway RSS, open descriptors, and the round-trip of GET /healthz on the
admin listener (served by the event loops: a proxy for event-loop lag). The verdict compares the
minute after warm-up with the last minute. Everything listens on 127.0.0.1; results (CSV and a
summary) go to --out (default Benchmarks/results/chaos).
"""
import argparse
import base64
import csv
import hashlib
import hmac
import os
import random
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".build" / "release"
SECRET = "chaos-device-secret-0123456789"


def log(message):
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- wire protocol v1 (docs/protocol.md) ---------------------------------------------------------

def frame(kind, flags, body):
    return struct.pack(">IBB", len(body) + 2, kind, flags) + body


def token(device, secret=SECRET, ttl=3600):
    expiry = str(int(time.time()) + ttl)
    mac = hmac.new(secret.encode(), f"terminus-token-v1\n{device}\n{expiry}".encode(), hashlib.sha256).digest()
    return f"v1.{expiry}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def hello(device, secret=SECRET):
    credential = token(device, secret).encode()
    body = struct.pack(">BHI", 1, 60, 0) + bytes([len(device)]) + device.encode()
    body += bytes([1]) + struct.pack(">H", len(credential)) + credential
    return frame(0x01, 0, body)


def publish(message_id, topic, payload, qos=1):
    body = struct.pack(">I", message_id) + struct.pack(">H", len(topic)) + topic.encode() + payload
    return frame(0x03, 1 if qos == 1 else 0, body)


PING = frame(0x06, 0, b"12345678")


def read_frame(sock):
    header = b""
    while len(header) < 6:
        chunk = sock.recv(6 - len(header))
        if not chunk:
            return None
        header += chunk
    length, kind, _ = struct.unpack(">IBB", header)
    body = b""
    while len(body) < length - 2:
        chunk = sock.recv(length - 2 - len(body))
        if not chunk:
            return None
        body += chunk
    return kind, body


class Run:
    def __init__(self, args, workspace):
        self.args = args
        self.ws = workspace
        self.end = time.time() + args.minutes * 60
        self.port = free_port()
        self.admin = free_port()
        self.backend_port = free_port()
        self.context = ssl.create_default_context(cafile=str(workspace / "ca.pem"))
        self.context.check_hostname = False
        self.lock = threading.Lock()
        self.counts = {"ok": 0, "not_ok": 0, "errors": 0}
        self.backend = None
        self.gateway = None

    def alive(self):
        return time.time() < self.end

    def count(self, key, n=1):
        with self.lock:
            self.counts[key] += n

    def connect(self, timeout=5, source="127.0.0.10"):
        # Attackers connect from their own loopback addresses (127.0.0.2-5), well-behaved devices
        # from 127.0.0.10: per-address limits (auth throttle) must hit the attacker, not everyone.
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=timeout, source_address=(source, 0))
        return self.context.wrap_socket(raw, server_hostname="localhost")

    # -- processes ---------------------------------------------------------------------------

    def start_backend(self, fail_every=0):
        arguments = [str(BIN / "terminus-echo-backend"), "--listen", f"127.0.0.1:{self.backend_port}", "--quiet"]
        if fail_every:
            arguments += ["--fail-every", str(fail_every)]
        self.backend = subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop_backend(self, sig=signal.SIGTERM):
        if self.backend and self.backend.poll() is None:
            self.backend.send_signal(sig)
            try:
                self.backend.wait(10)
            except subprocess.TimeoutExpired:
                self.backend.kill()
                self.backend.wait()

    def start_gateway(self):
        config = self.ws / "terminus.yaml"
        config.write_text(
            "instance_id: gw-chaos\nlog_level: notice\n"
            f"device:\n  listen: \"127.0.0.1:{self.port}\"\n  transport: tls\n"
            "  tls:\n    certificate_chain: server.pem\n    private_key: server-key.pem\n"
            "auth:\n  secrets_file: secrets.yaml\n"
            "timeouts:\n  frame: 5s\n  write_stall: 5s\n"
            f"services:\n  - name: echo\n    target: \"127.0.0.1:{self.backend_port}\"\n    topics: [\"#\"]\n"
            f"admin:\n  listen: \"127.0.0.1:{self.admin}\"\n")
        self.gateway_log = open(self.ws / "gateway.log", "w")
        self.gateway = subprocess.Popen([str(BIN / "terminus"), "run", "--config", str(config)],
                                        stdout=self.gateway_log, stderr=subprocess.STDOUT, cwd=self.ws)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the gateway did not start")

    # -- attacks -----------------------------------------------------------------------------

    def never_reads(self):
        held = []
        while self.alive():
            try:
                sock = self.connect(source="127.0.0.2")
                sock.sendall(hello(f"never-reads-{random.randrange(1000)}"))
                sock.setblocking(False)
                for _ in range(2000):
                    try:
                        sock.send(PING * 64)
                    except (BlockingIOError, ssl.SSLWantWriteError):
                        break
                    except OSError:
                        break
                held.append(sock)
                if len(held) > 5:
                    held.pop(0).close()
            except OSError:
                self.count("errors")
            time.sleep(3)
        for sock in held:
            sock.close()

    def qos0_flood(self):
        batch = b"".join(publish(0, "flood/x", b"x" * 64, qos=0) for _ in range(500))
        while self.alive():
            try:
                sock = self.connect(source="127.0.0.3")
                sock.sendall(hello("qos0-flood"))
                sock.settimeout(2)
                while self.alive():
                    sock.sendall(batch)
            except OSError:
                time.sleep(0.5)

    def trickle(self):
        sockets = []
        while self.alive():
            try:
                while len(sockets) < 50:
                    sock = self.connect(source="127.0.0.4")
                    sock.sendall(hello(f"trickle-{len(sockets)}"))
                    sock.sendall(b"\x00\x00")
                    sockets.append(sock)
                for sock in list(sockets):
                    try:
                        sock.send(b"\x00")
                    except OSError:
                        sockets.remove(sock)
                        sock.close()
            except OSError:
                self.count("errors")
            time.sleep(2)
        for sock in sockets:
            sock.close()

    def bad_tokens(self):
        while self.alive():
            try:
                sock = self.connect(timeout=2, source="127.0.0.5")
                sock.sendall(hello("bad-token", secret="not-the-secret-0123456789"))
                read_frame(sock)
                sock.close()
            except OSError:
                pass
            time.sleep(0.05)

    def reconnect_loop(self):
        while self.alive():
            try:
                sock = self.connect(timeout=2, source="127.0.0.6")
                sock.sendall(hello("reconnects"))
                read_frame(sock)
                sock.close()
            except OSError:
                pass
            time.sleep(0.05)

    def well_behaved(self, index):
        device = f"good-{index}"
        message_id = 0
        while self.alive():
            try:
                sock = self.connect()
                sock.sendall(hello(device))
                welcome = read_frame(sock)
                if not welcome or welcome[0] != 0x02:
                    self.count("errors")
                    time.sleep(1)
                    continue
                for _ in range(random.randrange(10, 60)):
                    if not self.alive():
                        break
                    message_id = message_id % 1_000_000 + 1
                    sock.sendall(publish(message_id, "good/status", b'{"ok":true}'))
                    sock.settimeout(15)
                    reply = read_frame(sock)
                    if reply and reply[0] == 0x04:
                        status = struct.unpack(">H", reply[1][4:6])[0]
                        self.count("ok" if status == 0 else "not_ok")
                    else:
                        self.count("errors")
                        break
                    time.sleep(1)
                sock.close()
            except OSError:
                self.count("errors")
                time.sleep(1)

    def backend_cycle(self):
        phases = [("normal", 20), ("stalled", 10), ("normal", 10), ("killed", 5), ("erroring", 10), ("normal", 5)]
        while self.alive():
            for name, seconds in phases:
                if not self.alive():
                    return
                log(f"backend: {name}")
                if name == "stalled":
                    self.backend.send_signal(signal.SIGSTOP)
                    time.sleep(seconds)
                    self.backend.send_signal(signal.SIGCONT)
                    continue
                if name == "killed":
                    self.stop_backend(signal.SIGKILL)
                    time.sleep(seconds)
                    self.start_backend()
                    continue
                if name == "erroring":
                    self.stop_backend()
                    self.start_backend(fail_every=3)
                    time.sleep(seconds)
                    self.stop_backend()
                    self.start_backend()
                    continue
                time.sleep(seconds)

    # -- sampling ----------------------------------------------------------------------------

    def health_ms(self):
        start = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", self.admin), timeout=5) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = s.recv(100)
                if b"200" not in data:
                    return None
        except OSError:
            return None
        return (time.monotonic() - start) * 1000

    def sample(self):
        pid = self.gateway.pid
        rss = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return rss, fds, self.health_ms()


def percentile(values, p):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def make_workspace(directory: Path):
    d = directory
    openssl = ["openssl"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": True}
    subprocess.run(openssl + ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", d / "ca-key.pem"], **quiet)
    subprocess.run(openssl + ["req", "-x509", "-new", "-key", d / "ca-key.pem", "-sha256", "-days", "2",
                              "-subj", "/CN=Terminus chaos CA", "-out", d / "ca.pem"], **quiet)
    subprocess.run(openssl + ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", d / "server-key.pem"], **quiet)
    subprocess.run(openssl + ["req", "-new", "-key", d / "server-key.pem", "-subj", "/CN=localhost",
                              "-out", d / "server.csr"], **quiet)
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    subprocess.run(openssl + ["x509", "-req", "-in", d / "server.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca-key.pem",
                              "-CAcreateserial", "-days", "2", "-sha256", "-extfile", d / "ext.cnf",
                              "-out", d / "server.pem"], **quiet)
    (d / "secrets.yaml").write_text(f'prefixes:\n  "": "{SECRET}"\n')


def main():
    global BIN
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--bin", type=Path, default=BIN,
                        help="where the release binaries are (default .build/release)")
    parser.add_argument("--out", type=Path, default=ROOT / "Benchmarks" / "results" / "chaos")
    args = parser.parse_args()
    BIN = args.bin.resolve()
    if not args.no_build:
        for product in ["terminus", "terminus-echo-backend"]:
            subprocess.run(["swift", "build", "-c", "release", "--package-path", ROOT, "--product", product],
                           check=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="terminus-chaos-") as directory:
        ws = Path(directory)
        make_workspace(ws)
        run = Run(args, ws)
        run.start_backend()
        run.start_gateway()
        log(f"gateway on {run.port}, admin on {run.admin}, backend on {run.backend_port}; {args.minutes} min")
        threads = [threading.Thread(target=run.backend_cycle, daemon=True)]
        threads += [threading.Thread(target=t, daemon=True) for t in
                    [run.never_reads, run.qos0_flood, run.trickle, run.bad_tokens, run.reconnect_loop]]
        threads += [threading.Thread(target=run.well_behaved, args=(i,), daemon=True) for i in range(200)]
        for thread in threads:
            thread.start()
        samples = []
        started = time.time()
        with open(args.out / "samples.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["seconds", "rss_mib", "fds", "healthz_ms", "acks_ok", "acks_not_ok", "errors"])
            while run.alive():
                time.sleep(5)
                if run.gateway.poll() is not None:
                    log("the gateway exited")
                    break
                rss, fds, lag = run.sample()
                with run.lock:
                    counts = dict(run.counts)
                row = [round(time.time() - started), round(rss, 1), fds, None if lag is None else round(lag, 1),
                       counts["ok"], counts["not_ok"], counts["errors"]]
                writer.writerow(row)
                f.flush()
                samples.append(row)
                log(f"rss {rss:.0f} MiB, fds {fds}, healthz {lag if lag is None else round(lag, 1)} ms, "
                    f"acks ok {counts['ok']}, not ok {counts['not_ok']}, errors {counts['errors']}")
        crashed = run.gateway.poll() is not None
        for thread in threads:
            thread.join(timeout=20)
        run.gateway.send_signal(signal.SIGTERM)
        try:
            run.gateway.wait(30)
        except subprocess.TimeoutExpired:
            run.gateway.kill()
        run.stop_backend()
        (args.out / "gateway.log").write_text((ws / "gateway.log").read_text()[-200_000:])

    warm = [s for s in samples if 60 <= s[0] < 120] or samples[: max(1, len(samples) // 4)]
    last = [s for s in samples if s[0] >= samples[-1][0] - 60] if samples else []
    verdicts = []
    if crashed or not samples:
        verdicts.append("FAIL: the gateway exited during the run")
    else:
        rss_warm, rss_last = statistics.median(s[1] for s in warm), statistics.median(s[1] for s in last)
        fds_warm, fds_last = statistics.median(s[2] for s in warm), statistics.median(s[2] for s in last)
        lag_p99 = percentile([s[3] for s in samples], 99)
        failed_probes = sum(1 for s in samples if s[3] is None)
        ok_total = samples[-1][4]
        verdicts.append(("pass" if rss_last <= rss_warm * 1.3 + 30 else "FAIL")
                        + f": RSS {rss_warm:.0f} MiB after warm-up, {rss_last:.0f} MiB in the last minute")
        verdicts.append(("pass" if fds_last <= fds_warm + 200 else "FAIL")
                        + f": descriptors {fds_warm:.0f} after warm-up, {fds_last:.0f} in the last minute")
        verdicts.append(("pass" if lag_p99 is not None and lag_p99 < 500 and failed_probes == 0 else "FAIL")
                        + f": /healthz p99 {lag_p99} ms, {failed_probes} failed probes")
        verdicts.append(("pass" if ok_total > 0 else "FAIL")
                        + f": well-behaved devices got {ok_total} OK acks, {samples[-1][5]} others, "
                          f"{samples[-1][6]} connection errors")
    summary = "\n".join(verdicts)
    (args.out / "summary.txt").write_text(summary + "\n")
    print(summary)
    return 1 if any(v.startswith("FAIL") for v in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
