#!/usr/bin/env bash
# tidings beside gorush v1.22.0 and a bare HTTP/2 client, in one run, on the
# same provider stand-in (issue 11): Android through FCM HTTP v1, iOS
# through APNs, all on loopback.
#
#   scripts/bench-gorush.sh [android|ios|both]      (default both)
#
# Environment: N (notifications per system, default 40000), ROUNDS (how
# many times each channel's systems run in turn, default 1: the table then
# gives each figure's median, the rate's range, and the ratios taken round
# by round, so a drift in the machine's speed does not tilt them), USERS (10000),
# IN_FLIGHT (requests in flight to the provider: tidings' provider limit,
# the bare client's concurrency, gorush's worker_num and APNs
# max_concurrent_pushes; default 100), GORUSH_BATCH (notifications per POST
# /api/push, default 100, gorush's max_notification), TIDINGS (the binary,
# default target/release/tidings: build it with `cargo build --release --bin
# tidings`), TIDINGS_BEFORE (an earlier tidings build to run too, on the same
# stand-in, for before/after in one run), TIDINGS_BENCH_CACHE (where gorush is built once, default
# ~/.cache/tidings-bench).
#
# gorush has no setting for the provider hosts, so everything runs in a
# private mount and network namespace (`unshare --mount --net
# --map-root-user`, no root needed where user namespaces are allowed): a
# bind-mounted /etc/hosts sends fcm.googleapis.com, oauth2.googleapis.com
# and the APNs hosts to 127.0.0.1, where `tidings bench-provider` listens on
# port 443 with a certificate for those names, and SSL_CERT_FILE makes
# gorush trust its CA. tidings reaches the same server by address.
#
# Rates are delivered messages per second counted at the stand-in (gorush:
# from the first POST to the last message received; tidings and the bare
# client: as `tidings bench` prints them). CPU is each system's own process
# (the stand-in is a separate process in all three runs); tidings' without
# the threads of the bench's callers, as gorush's is without its feeder.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CHANNELS=${1:-both}
N=${N:-40000}
ROUNDS=${ROUNDS:-1}
USERS=${USERS:-10000}
IN_FLIGHT=${IN_FLIGHT:-100}
GORUSH_BATCH=${GORUSH_BATCH:-100}
TIDINGS=${TIDINGS:-$ROOT/target/release/tidings}
CACHE=${TIDINGS_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tidings-bench}
GORUSH_VERSION=v1.22.0
GORUSH=$CACHE/gorush-$GORUSH_VERSION

case $CHANNELS in
  android | ios) ;;
  both) CHANNELS="android ios" ;;
  *) echo "usage: $0 [android|ios|both]" >&2; exit 2 ;;
esac

if [ -z "${TIDINGS_BENCH_NAMESPACE:-}" ]; then
  # Outside: build gorush once, then go on in a namespace of our own.
  if [ ! -x "$GORUSH" ]; then
    echo "building gorush $GORUSH_VERSION into $CACHE (once)"
    mkdir -p "$CACHE"
    dir=$(go mod download -json "github.com/appleboy/gorush@$GORUSH_VERSION" |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
    (cd "$dir" && go build -o "$GORUSH.tmp" .) && mv "$GORUSH.tmp" "$GORUSH"
  fi
  if [ ! -x "$TIDINGS" ]; then
    echo "no $TIDINGS: cargo build --release --bin tidings" >&2
    exit 1
  fi
  export TIDINGS_BENCH_NAMESPACE=1 TIDINGS GORUSH
  exec unshare --mount --net --map-root-user bash "$0" "$@"
fi

# Inside the namespace: loopback is down until brought up.
ip link set lo up
WORK=$(mktemp -d /tmp/tidings-bench-gorush.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/hosts" <<EOF
127.0.0.1 localhost
127.0.0.1 fcm.googleapis.com oauth2.googleapis.com
127.0.0.1 api.push.apple.com api.sandbox.push.apple.com api.development.push.apple.com
EOF
mount --bind "$WORK/hosts" /etc/hosts

"$TIDINGS" bench-provider --listen 127.0.0.1:443 --credentials-dir "$WORK/creds" \
  >"$WORK/provider.log" 2>&1 &
PROVIDER_PID=$!
PIDS+=("$PROVIDER_PID")
STAND_IN=https://127.0.0.1:443
for _ in $(seq 100); do
  curl -sf --cacert "$WORK/creds/ca.pem" "$STAND_IN/bench/stats" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf --cacert "$WORK/creds/ca.pem" "$STAND_IN/bench/stats" >/dev/null ||
  { cat "$WORK/provider.log" >&2; exit 1; }

# The team and key ids, topic and project match src/bench_providers.rs.
cat >"$WORK/gorush.yml" <<EOF
core:
  port: "8088"
  worker_num: ${GORUSH_WORKERS:-$IN_FLIGHT}
  queue_num: $((N + 1000))
  max_notification: $GORUSH_BATCH
  mode: release
  sync: false
android:
  enabled: true
  key_path: $WORK/creds/service-account.json
  max_retry: 0
ios:
  enabled: true
  key_path: $WORK/creds/apns-key.p8
  key_type: p8
  key_id: KEYBENCH01
  team_id: TEAMBENCH1
  production: true
  max_concurrent_pushes: $IN_FLIGHT
  max_retry: 0
log:
  access_log: $WORK/gorush-access.log
  access_level: error
  error_log: $WORK/gorush-error.log
  error_level: error
stat:
  engine: memory
EOF

# Feeds gorush `count` notifications from sequence `first`, batch by batch
# on one keep-alive connection, and waits until the stand-in has them all.
# Prints: delivered/s, CPU us per notification, cores, peak RSS MiB.
gorush_run() {
  local channel=$1 first=$2 count=$3 pid=$4
  CHANNEL=$channel FIRST=$first COUNT=$count PID=$pid BATCH=$GORUSH_BATCH \
    CA=$WORK/creds/ca.pem python3 - <<'PY'
import http.client, json, os, ssl, sys, time

channel, first, count = os.environ["CHANNEL"], int(os.environ["FIRST"]), int(os.environ["COUNT"])
pid, batch = os.environ["PID"], int(os.environ["BATCH"])
tick = os.sysconf("SC_CLK_TCK")
stand_in = http.client.HTTPSConnection(
    "127.0.0.1", 443, context=ssl.create_default_context(cafile=os.environ["CA"]))

def stand_in_call(method, path):
    stand_in.request(method, path)
    body = stand_in.getresponse().read()
    return json.loads(body) if body else None

def cpu_ticks():
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])

def notification(seq):
    n = {"platform": 2 if channel == "android" else 1, "title": "bench",
         "message": f"bench {seq}"}
    if channel == "android":
        n["tokens"] = [f"bench-device-{seq}"]
    else:
        n["tokens"] = [f"{seq:064x}"]
        n["topic"] = "com.example.tidings.bench"
    return n

stand_in_call("POST", "/bench/reset")
gorush = http.client.HTTPConnection("127.0.0.1", 8088)
ticks0, t0 = cpu_ticks(), time.time()
for start in range(first, first + count, batch):
    body = json.dumps({"notifications": [
        notification(s) for s in range(start, min(start + batch, first + count))]})
    gorush.request("POST", "/api/push", body, {"Content-Type": "application/json"})
    resp = gorush.getresponse()
    text = resp.read()
    if resp.status != 200:
        sys.exit(f"gorush answered {resp.status}: {text[:200]!r}")
deadline = time.time() + 600
while True:
    stats = stand_in_call("GET", "/bench/stats")
    if stats["delivered"] >= count or time.time() > deadline:
        break
    time.sleep(0.05)
ticks1 = cpu_ticks()
elapsed = max(stats["last_us"] / 1e6 - t0, 1e-6)
with open(f"/proc/{pid}/status") as f:
    hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
cpu = (ticks1 - ticks0) / tick
print(f"{stats['delivered'] / elapsed:.0f} {cpu * 1e6 / max(stats['delivered'], 1):.0f} "
      f"{cpu / elapsed:.2f} {hwm / 1024:.0f} {stats['delivered']}")
PY
}

RESULTS=()
for round in $(seq "$ROUNDS"); do
  for channel in $CHANNELS; do
    echo "== round $round/$ROUNDS, $channel: gorush $GORUSH_VERSION ($N notifications, worker_num ${GORUSH_WORKERS:-$IN_FLIGHT})"
    SSL_CERT_FILE=$WORK/creds/ca.pem "$GORUSH" -c "$WORK/gorush.yml" \
      >"$WORK/gorush.out" 2>&1 &
    gorush_pid=$!
    PIDS+=("$gorush_pid")
    for _ in $(seq 100); do
      curl -sf http://127.0.0.1:8088/healthz >/dev/null 2>&1 && break
      sleep 0.1
    done
    # Warm-up: the OAuth token and the HTTP/2 connection, as tidings warms up.
    gorush_run "$channel" 1000000000 20 "$gorush_pid" >/dev/null ||
      { tail -20 "$WORK/gorush.out" "$WORK/gorush-error.log" >&2; exit 1; }
    read -r g_rate g_cpu g_cores g_rss g_delivered < <(gorush_run "$channel" 0 "$N" "$gorush_pid")
    kill "$gorush_pid"
    wait "$gorush_pid" 2>/dev/null || true
    echo "gorush: $g_delivered delivered, $g_rate/s, $g_cpu us CPU per notification ($g_cores cores), peak RSS $g_rss MiB"
    RESULTS+=("$round $channel gorush $g_rate $g_cpu $g_cores $g_rss")
    if [ "$g_delivered" -lt "$N" ]; then
      echo "gorush delivered only $g_delivered of $N" >&2
      tail -20 "$WORK/gorush-error.log" >&2 || true
    fi

    if [ -n "${TIDINGS_BEFORE:-}" ]; then
      echo "== round $round/$ROUNDS, $channel: the earlier tidings build ($TIDINGS_BEFORE)"
      "$TIDINGS_BEFORE" bench --channel "$channel" --provider-addr 127.0.0.1:443 \
        --notifications "$N" --users "$USERS" --batch 500 --callers 4 \
        --provider-in-flight "$IN_FLIGHT" --no-baseline | tee "$WORK/before-$channel.out"
      out=$WORK/before-$channel.out
      RESULTS+=("$round $channel tidings-before $(awk '/^  throughput/ {print $2}' "$out") \
$(awk '/^  cpu  / {print $2}' "$out") $(awk '/^  cpu  / {gsub(/\(/, "", $6); print $6}' "$out") \
$(awk '/^  peak rss/ {print $3}' "$out")")
    fi

    echo "== round $round/$ROUNDS, $channel: tidings bench (embedded), then the bare client"
    "$TIDINGS" bench --channel "$channel" --provider-addr 127.0.0.1:443 \
      --notifications "$N" --users "$USERS" --batch 500 --callers 4 \
      --provider-in-flight "$IN_FLIGHT" | tee "$WORK/tidings-$channel.out"
    out=$WORK/tidings-$channel.out
    t_rate=$(awk '/^  throughput/ {print $2}' "$out")
    # The pipeline's CPU without the bench's callers (its load generator),
    # as gorush's is without its feeder.
    t_cpu=$(awk '/^  pipeline cpu/ {print $3}' "$out")
    t_cores=$(awk '/^  pipeline cpu/ {gsub(/\(/, "", $7); print $7}' "$out")
    t_rss=$(awk '/^  peak rss/ {print $3}' "$out")
    b_rate=$(awk '/^  bare client/ {print $3}' "$out")
    b_cpu=$(awk '/^  bare client/ {print $5}' "$out")
    RESULTS+=("$round $channel tidings $t_rate $t_cpu $t_cores $t_rss")
    RESULTS+=("$round $channel bare-client $b_rate $b_cpu - -")
  done
done

echo
echo "== side by side (N=$N, in flight $IN_FLIGHT, same stand-in, $ROUNDS round(s); medians)"
printf '%s\n' "${RESULTS[@]}" | awk '
  function median(list,    n, v, i, j, t) {
    n = split(list, v, " ")
    if (v[1] == "-") return "-"
    for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j - 1] + 0 > v[j] + 0; j--) {
      t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
    return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
  }
  { row[NR] = $0
    if ($3 == "gorush") g[$1, $2] = $4; if ($3 == "bare-client") b[$1, $2] = $4 }
  END {
    for (i = 1; i <= NR; i++) {
      split(row[i], f, " "); k = f[2] " " f[3]
      if (!(k in seen)) { seen[k] = 1; order[++systems] = k }
      rates[k] = rates[k] " " f[4]; cpus[k] = cpus[k] " " f[5]
      cores[k] = cores[k] " " f[6]; rss[k] = rss[k] " " f[7]
      if (!(k in lo) || f[4] + 0 < lo[k] + 0) lo[k] = f[4]
      if (!(k in hi) || f[4] + 0 > hi[k] + 0) hi[k] = f[4]
      vg[k] = vg[k] " " f[4] / g[f[1], f[2]]; vb[k] = vb[k] " " 100 * f[4] / b[f[1], f[2]]
    }
    printf "%-8s %-14s %12s %13s %14s %6s %9s %10s %10s\n", "channel", "system", "delivered/s",
      "range", "CPU us/notif", "cores", "RSS MiB", "vs gorush", "vs bare"
    for (i = 1; i <= systems; i++) {
      k = order[i]; split(k, f, " ")
      printf "%-8s %-14s %12.0f %13s %14s %6s %9s %9.2fx %9.0f%%\n", f[1], f[2], median(rates[k]),
        lo[k] "-" hi[k], median(cpus[k]), median(cores[k]), median(rss[k]), median(vg[k]), median(vb[k])
    }
  }'
