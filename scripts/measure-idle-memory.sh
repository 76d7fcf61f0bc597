#!/usr/bin/env bash
# Measures the gateway's resident memory per idle device session.
#
#   scripts/measure-idle-memory.sh [COUNT] [tls|plaintext] [ROUNDS] [nio-ssl|lean]
#
# The fourth argument picks the TLS engine (`device.tls.engine`); both engines then run TLS 1.3
# (the lean engine takes only that so far).
# Builds the release binary, starts a gateway (its own process), connects COUNT idle devices
# from a second process spread over source addresses 127.0.0.2…, and reads VmRSS from
# /proc/PID/status of the gateway before, during and after. Per-device figure:
# (RSS with COUNT devices − RSS before) / COUNT, from the first round. Later rounds reconnect
# the same fleet: RSS that keeps growing round after round would be a leak (glibc keeps freed
# memory, so RSS after a disconnect does not drop, but it must be reused). Also prints the
# gateway's CPU per connect in the first round (TLS handshake, HELLO, 8 s of idle sessions).
# Loopback only; everything stops by itself.
set -euo pipefail
count=${1:-10000}
transport=${2:-tls}
rounds=${3:-1}
engine=${4:-nio-ssl}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
swift build -c release --product terminus >/dev/null
bin=$(swift build -c release --show-bin-path)/terminus
work=$(mktemp -d)
port=$((20000 + RANDOM % 20000))

# Development mode makes the CA, server certificate and device secret; stop it once they exist.
# No admin listener in either run: a gateway of a previous run may still be draining on the
# default admin port.
"$bin" run --dev-directory "$work/dev" --device-listen "127.0.0.1:$port" --admin-listen off >"$work/dev.log" 2>&1 &
dev=$!
for _ in $(seq 1 100); do [ -f "$work/dev/devices.yaml" ] && break; sleep 0.1; done
kill "$dev"; wait "$dev" 2>/dev/null || true
secret=$(cat "$work/dev/device-secret.txt")

tls_block=""
client_tls=(--ca "$work/dev/ca.pem" --server-name localhost)
if [ "$transport" = tls ]; then
  tls_block="  tls:
    certificate_chain: $work/dev/server.pem
    private_key: $work/dev/server-key.pem
    engine: $engine
    min_version: \"1.3\""
else
  client_tls=(--plaintext)
fi
cat >"$work/terminus.yaml" <<YAML
instance_id: memory-probe
log_level: warning
event_loop_threads: 1
device:
  listen: "127.0.0.1:$port"
  transport: $transport
$tls_block
auth:
  secrets_file: $work/dev/devices.yaml
keepalive:
  default: 540s
  max: 540s
admin:
  listen: "off"
# The fleet comes from 8 loopback addresses, all at once: no per-address or accept-rate cap.
limits:
  max_connections_per_address: 0
  new_connections_per_second: 0
  max_handshakes: 0
YAML
"$bin" run --config "$work/terminus.yaml" >"$work/gateway.log" 2>&1 &
gateway=$!
trap 'kill $gateway 2>/dev/null || true' EXIT
sleep 2
rss() { awk '/VmRSS/ {print $2}' "/proc/$gateway/status"; }
# User + system CPU of the gateway in clock ticks (/proc/PID/stat fields 14 and 15).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$gateway/stat"; }
before=$(rss)
cpu_before=$(cpu_ticks)

sources=$(seq -s, -f "127.0.0.%g" 2 9)
during_first=""
afters=()
for round in $(seq 1 "$rounds"); do
  : >"$work/fleet.log"
  "$bin" device fleet --gateway "127.0.0.1:$port" "${client_tls[@]}" --secret "$secret" \
    --count "$count" --concurrency 200 --sources "$sources" --hold 15 --threads 2 >"$work/fleet.log" 2>&1 &
  fleet=$!
  # Wait until every device is connected, let the gateway settle, then read.
  for _ in $(seq 1 600); do grep -q "fleet connected=" "$work/fleet.log" && break; sleep 0.5; done
  sleep 8
  during=$(rss)
  if [ -z "$during_first" ]; then
    during_first=$during
    # The first round's connects (TLS handshakes, HELLOs) and 8 s of idle sessions.
    cpu_connect_us=$(( ($(cpu_ticks) - cpu_before) * 1000000 / $(getconf CLK_TCK) / count ))
  fi
  wait "$fleet" || true
  sleep 3
  afters+=("$(rss)")
  grep fleet "$work/fleet.log"
done
per_device=$(( (during_first - before) * 1024 / count ))
echo "transport=$transport engine=$engine devices=$count rss_before_kib=$before rss_with_devices_kib=$during_first per_device_bytes=$per_device cpu_per_connect_us=$cpu_connect_us rss_after_each_round_kib=${afters[*]}"
