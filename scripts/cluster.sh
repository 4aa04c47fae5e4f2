#!/usr/bin/env bash
# The production shape of tidings on one machine: every role its own OS process of the
# `tidings` binary, on the real Kafka and Cassandra of scripts/servers.sh.
#
# usage: scripts/cluster.sh <command>
#   up              start the servers (scripts/servers.sh up), write the cluster's configuration,
#                   run `tidings init`, create the app `cluster` (once), start every process and
#                   wait until each answers its readiness probe
#   down            stop the processes `up` started, by recorded pid (SIGTERM, then SIGKILL after
#                   TIDINGS_CLUSTER_STOP_TIMEOUT s); topics, keyspace and state dir are kept
#   status          each process: name, pid, alive or dead, ports, what it runs (exit 1 if any is dead)
#   logs [-f] [name]  the last lines of one process's log (-f: follow it); no name: every log's tail
#   env             export lines for the client commands: TIDINGS_CONFIG, TIDINGS_GATEWAY_URL,
#                   TIDINGS_APP_KEY, TIDINGS_APP_SECRET, and TIDINGS_CLUSTER_GATEWAYS (both gateways)
#
# Processes (each with its own log file <dir>/logs/<name>.log and its own /metrics port):
#   gateway-1, gateway-2   `tidings gateway`, each with its own gRPC and HTTP port (HTTP serves
#                          /metrics, /healthz, /readyz)
#   enricher, scheduler, retries (retry-1..3), feed (feed-planner, feed-writer, feed-tally, feed-pruner, feed-follows), template-stats,
#   senders-1, senders-2   `tidings process ...`: two replicas of the six senders in one
#                          consumer group, sharing the partitions
#
# Settings (environment):
#   TIDINGS_CLUSTER_DIR        state dir: config, pids, logs, app credentials (default <repo>/.cluster)
#   TIDINGS_CLUSTER_NAME       topic and consumer-group prefix and Cassandra keyspace, so a cluster
#                              never shares topics with tests or another cluster (default tidings_cluster;
#                              lowercase letters, digits and _)
#   TIDINGS_CLUSTER_CONFIG     a TOML file appended to the generated configuration, e.g. provider
#                              endpoints ([providers.sms] ...); it may add any table the generated file
#                              does not have (the generated one has kafka, store, tracking and feed)
#   TIDINGS_CLUSTER_BASE_PORT  first port to hand out; ports in use are skipped (default 27100)
#   TIDINGS_BIN                the tidings binary (default target/debug/tidings, built with
#                              `cargo build --bin tidings` when missing)
#   TIDINGS_CLUSTER_READY_TIMEOUT  seconds `up` waits for every process to be ready (default 180)
#   TIDINGS_CLUSTER_STOP_TIMEOUT   seconds `down` waits after SIGTERM before SIGKILL (default 30)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)

DIR=${TIDINGS_CLUSTER_DIR:-$ROOT/.cluster}
NAME=${TIDINGS_CLUSTER_NAME:-tidings_cluster}
EXTRA_CONFIG=${TIDINGS_CLUSTER_CONFIG:-}
BASE_PORT=${TIDINGS_CLUSTER_BASE_PORT:-27100}
READY_TIMEOUT=${TIDINGS_CLUSTER_READY_TIMEOUT:-180}
STOP_TIMEOUT=${TIDINGS_CLUSTER_STOP_TIMEOUT:-30}
BIN=${TIDINGS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/tidings}

CONFIG="$DIR/tidings.toml"
PROCS="$DIR/procs.tsv"   # name, pid, start time (jiffies since boot), ports, command
APP="$DIR/app.env"
LOGS="$DIR/logs"

# The process groups: name and `tidings` arguments. The senders run twice: two replicas
# in one consumer group, as a deployment scales a stage.
SENDERS="sender-ios sender-android sender-sms sender-email sender-web sender-in-app"
STAGES=(
  "enricher|process enricher"
  "scheduler|process scheduler"
  "senders-1|process $SENDERS"
  "senders-2|process $SENDERS"
  "retries|process retry-1 retry-2 retry-3"
  "feed|process feed-planner feed-writer feed-tally feed-pruner feed-follows"
  "template-stats|process template-stats"
)

say() { printf '%s\n' "cluster: $*" >&2; }
die() { printf '%s\n' "cluster.sh: error: $*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

# ---------------------------------------------------------------------------------------------
# processes

# The start time of a pid (field 22 of /proc/<pid>/stat), empty when it is gone. Recorded at
# start, it tells our process from a later one that got the same pid.
start_time() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  # The command name (field 2) may hold spaces; the fields after its closing paren do not.
  stat=${stat##*) }
  # shellcheck disable=SC2086
  set -- $stat
  # After the paren, field 3 (state) is $1, so field 22 is $20. A zombie has exited.
  [[ "$1" == Z ]] && return 0
  printf '%s' "${20}"
}

# Alive: the recorded pid runs and is the process we started (same start time).
alive() { [[ -n "$2" && "$(start_time "$1")" == "$2" ]]; }

port_free() {
  "${PYTHON:-python3}" - "$1" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
}

STARTING=0
NEXT_PORT=$BASE_PORT
# The next free port from NEXT_PORT on, into PORT.
take_port() {
  while ! port_free "$NEXT_PORT"; do
    NEXT_PORT=$((NEXT_PORT + 1))
    (( NEXT_PORT < BASE_PORT + 1000 )) || die "no free port in $BASE_PORT..$((BASE_PORT + 999)) (TIDINGS_CLUSTER_BASE_PORT)"
  done
  PORT=$NEXT_PORT
  NEXT_PORT=$((NEXT_PORT + 1))
}

# start <name> <ports description> <env assignment>... -- <tidings args>...
start() {
  local name=$1 ports=$2; shift 2
  local envs=()
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  local log="$LOGS/$name.log"
  printf '\n===== %s: tidings %s\n' "$(date -u +%FT%TZ)" "$*" >>"$log"
  # setsid: the process is in a session of its own, so a Ctrl-C in the terminal that ran `up`
  # does not reach it; `down` stops it. Not a group leader here (bash without job control runs
  # `&` in its own group), setsid execs without forking, so $! is the tidings pid.
  env "${envs[@]}" setsid "$BIN" --config "$CONFIG" "$@" </dev/null >>"$log" 2>&1 &
  local pid=$!
  local started
  started=$(start_time "$pid")
  [[ -n "$started" ]] || die "tidings $* exited at once; see $log:
$(tail -n 20 "$log")"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$pid" "$started" "$ports" "tidings $*" >>"$PROCS"
}

# Reads PROCS into parallel arrays.
load_procs() {
  P_NAME=(); P_PID=(); P_START=(); P_PORTS=(); P_CMD=()
  [[ -f "$PROCS" ]] || return 0
  local name pid st ports cmd
  while IFS=$'\t' read -r name pid st ports cmd; do
    [[ -n "$name" ]] || continue
    P_NAME+=("$name"); P_PID+=("$pid"); P_START+=("$st"); P_PORTS+=("$ports"); P_CMD+=("$cmd")
  done <"$PROCS"
}

# The URL a process answers readiness on (gateways: HTTP; stages: metrics).
probe_url() {
  local ports=$1 port
  if [[ $ports == *http=* ]]; then port=${ports##*http=}; else port=${ports##*metrics=}; fi
  port=${port%% *}
  printf 'http://127.0.0.1:%s' "$port"
}

# Ready: /readyz answers 200 or, on a process that does not serve /readyz, /healthz does.
# Python (which scripts/servers.sh needs anyway) rather than curl: one tool fewer.
ready() {
  "${PYTHON:-python3}" - "$1" <<'PY' 2>/dev/null
import sys, urllib.error, urllib.request
def status(path):
    try:
        return urllib.request.urlopen(sys.argv[1] + path, timeout=3).status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0
code = status("/readyz")
sys.exit(0 if code == 200 or (code == 404 and status("/healthz") == 200) else 1)
PY
}

# ---------------------------------------------------------------------------------------------
# commands

cmd_up() {
  [[ $NAME =~ ^[a-z][a-z0-9_]{0,40}$ ]] ||
    die "TIDINGS_CLUSTER_NAME=$NAME: use lowercase letters, digits and _ (it names topics and a keyspace)"
  [[ -z "$EXTRA_CONFIG" || -f "$EXTRA_CONFIG" ]] || die "TIDINGS_CLUSTER_CONFIG=$EXTRA_CONFIG: no such file"
  command -v "${PYTHON:-python3}" >/dev/null || die "python3 is needed (as by scripts/servers.sh) to find free ports and probe readiness"
  mkdir -p "$DIR" "$LOGS"
  load_procs
  local i
  for i in "${!P_NAME[@]}"; do
    if alive "${P_PID[$i]}" "${P_START[$i]}"; then
      die "the cluster in $DIR is already up (${P_NAME[$i]} is pid ${P_PID[$i]}); \`scripts/cluster.sh down\` first"
    fi
  done
  rm -f "$PROCS"

  # Its status lines go to stderr: stdout of `up` is the process table.
  "$SCRIPT_DIR/servers.sh" up >&2
  eval "$("$SCRIPT_DIR/servers.sh" env)"

  if [[ ! -x "$BIN" ]]; then
    [[ -z "${TIDINGS_BIN:-}" ]] || die "TIDINGS_BIN=$BIN is not an executable"
    say "building the tidings binary (cargo build --bin tidings)"
    (cd "$ROOT" && cargo build --bin tidings)
  fi

  # Secrets of this cluster, made once and kept with its state: links and tokens stay valid
  # across restarts.
  if [[ ! -f "$DIR/secrets" ]]; then
    (umask 077; printf '%s\n%s\n' "$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')" \
      "$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')" >"$DIR/secrets")
  fi
  local link_secret token_secret
  { read -r link_secret; read -r token_secret; } <"$DIR/secrets"

  take_port; local gw1_grpc=$PORT; take_port; local gw1_http=$PORT
  take_port; local gw2_grpc=$PORT; take_port; local gw2_http=$PORT

  {
    printf '# Written by scripts/cluster.sh up; rewritten on every up.\n\n'
    printf '[kafka]\nbootstrap_servers = "%s"\ntopic_prefix = "%s"\ngroup_prefix = "%s"\npartitions = 3\n\n' \
      "$TIDINGS_TEST_KAFKA" "$NAME" "$NAME"
    printf '[store]\nurl = "scylla://%s/%s"\n\n' "$TIDINGS_TEST_CQL" "$NAME"
    printf '[tracking]\npublic_url = "http://127.0.0.1:%s"\nlink_secret = "%s"\n\n' "$gw1_http" "$link_secret"
    printf '[feed]\nuser_token_secret = "%s"\n' "$token_secret"
    if [[ -n "$EXTRA_CONFIG" ]]; then
      printf '\n# ---- from %s\n' "$EXTRA_CONFIG"
      cat "$EXTRA_CONFIG"
    fi
  } >"$CONFIG"

  say "tidings init (topics $NAME.*, keyspace $NAME)"
  "$BIN" --config "$CONFIG" init >>"$LOGS/init.log" 2>&1 ||
    die "tidings init failed; see $LOGS/init.log:
$(tail -n 20 "$LOGS/init.log")"
  # The app is kept across ups; made again when its keyspace no longer has it (another
  # TIDINGS_CLUSTER_NAME, or a dropped keyspace).
  if [[ -f "$APP" ]]; then
    local kept
    kept=$(sed -n 's/^TIDINGS_APP_KEY=//p' "$APP")
    if ! "$BIN" --config "$CONFIG" apps list --output json 2>>"$LOGS/init.log" | grep -q "\"$kept\""; then
      rm -f "$APP"
    fi
  fi
  if [[ ! -f "$APP" ]]; then
    local out key secret
    out=$("$BIN" --config "$CONFIG" apps create cluster 2>>"$LOGS/init.log") ||
      die "tidings apps create failed; see $LOGS/init.log"
    key=$(sed -n 's/^app_key *= *//p' <<<"$out")
    secret=$(sed -n 's/^app_secret *= *//p' <<<"$out")
    [[ -n $key && -n $secret ]] || die "no app_key/app_secret in the output of tidings apps create: $out"
    (umask 077; printf 'TIDINGS_APP_KEY=%s\nTIDINGS_APP_SECRET=%s\n' "$key" "$secret" >"$APP")
  fi

  # From here on, a failure stops what was started.
  STARTING=1
  trap 'if (( STARTING )); then say "up failed; stopping what it started"; cmd_down || true; fi' EXIT
  start gateway-1 "grpc=$gw1_grpc http=$gw1_http" \
    "TIDINGS_GATEWAY__GRPC_ADDR=127.0.0.1:$gw1_grpc" "TIDINGS_GATEWAY__HTTP_ADDR=127.0.0.1:$gw1_http" -- gateway
  start gateway-2 "grpc=$gw2_grpc http=$gw2_http" \
    "TIDINGS_GATEWAY__GRPC_ADDR=127.0.0.1:$gw2_grpc" "TIDINGS_GATEWAY__HTTP_ADDR=127.0.0.1:$gw2_http" -- gateway
  local entry name args
  for entry in "${STAGES[@]}"; do
    name=${entry%%|*}; args=${entry#*|}
    take_port
    # shellcheck disable=SC2086
    start "$name" "metrics=$PORT" "TIDINGS_TELEMETRY__METRICS_ADDR=127.0.0.1:$PORT" -- $args
  done

  say "waiting for every process to be ready (at most ${READY_TIMEOUT}s)"
  load_procs
  local deadline=$((SECONDS + READY_TIMEOUT)) pending
  while :; do
    pending=()
    for i in "${!P_NAME[@]}"; do
      if ! alive "${P_PID[$i]}" "${P_START[$i]}"; then
        printf '%s\n' "cluster.sh: error: ${P_NAME[$i]} (pid ${P_PID[$i]}) exited while starting; last lines of $LOGS/${P_NAME[$i]}.log:" >&2
        tail -n 30 "$LOGS/${P_NAME[$i]}.log" >&2 || true
        exit 1
      fi
      ready "$(probe_url "${P_PORTS[$i]}")" || pending+=("${P_NAME[$i]}")
    done
    (( ${#pending[@]} == 0 )) && break
    if (( SECONDS >= deadline )); then
      printf '%s\n' "cluster.sh: error: not ready after ${READY_TIMEOUT}s: ${pending[*]} (see scripts/cluster.sh logs <name>)" >&2
      exit 1
    fi
    sleep 1
  done
  STARTING=0
  cmd_status
  say "up: client commands take \`eval \"\$(scripts/cluster.sh env)\"\`; gateways at 127.0.0.1:$gw1_grpc and 127.0.0.1:$gw2_grpc"
}

cmd_down() {
  load_procs
  if (( ${#P_NAME[@]} == 0 )); then
    say "nothing to stop in $DIR"
    return 0
  fi
  local i running=()
  for i in "${!P_NAME[@]}"; do
    if alive "${P_PID[$i]}" "${P_START[$i]}"; then
      kill -TERM "${P_PID[$i]}" 2>/dev/null || true
      running+=("$i")
    fi
  done
  local deadline=$((SECONDS + STOP_TIMEOUT)) left
  while :; do
    left=()
    for i in "${running[@]}"; do
      alive "${P_PID[$i]}" "${P_START[$i]}" && left+=("$i")
    done
    (( ${#left[@]} == 0 )) && break
    if (( SECONDS >= deadline )); then
      for i in "${left[@]}"; do
        say "${P_NAME[$i]} (pid ${P_PID[$i]}) did not stop within ${STOP_TIMEOUT}s of SIGTERM; SIGKILL"
        kill -KILL "${P_PID[$i]}" 2>/dev/null || true
      done
      sleep 1
      break
    fi
    sleep 0.2
  done
  rm -f "$PROCS"
  say "stopped ${#running[@]} process(es) of $DIR"
}

cmd_status() {
  load_procs
  if (( ${#P_NAME[@]} == 0 )); then
    say "not up ($DIR has no processes; \`scripts/cluster.sh up\` starts them)"
    return 1
  fi
  local i state dead=0
  printf '%-15s %-8s %-6s %-28s %s\n' NAME PID STATE PORTS COMMAND
  for i in "${!P_NAME[@]}"; do
    if alive "${P_PID[$i]}" "${P_START[$i]}"; then state=alive; else state=dead; dead=1; fi
    printf '%-15s %-8s %-6s %-28s %s\n' "${P_NAME[$i]}" "${P_PID[$i]}" "$state" "${P_PORTS[$i]}" "${P_CMD[$i]}"
  done
  return $dead
}

cmd_logs() {
  local follow=0
  if [[ ${1:-} == -f ]]; then follow=1; shift; fi
  local name=${1:-} lines=${TIDINGS_CLUSTER_LOG_LINES:-100}
  if [[ -z $name ]]; then
    local f
    for f in "$LOGS"/*.log; do
      [[ -f $f ]] || continue
      printf '===== %s\n' "$f"
      tail -n 20 "$f"
    done
    return 0
  fi
  local log="$LOGS/$name.log"
  [[ -f $log ]] || die "no log for \`$name\` in $LOGS (names: $(cd "$LOGS" 2>/dev/null && ls ./*.log 2>/dev/null | sed 's|^\./||; s|\.log$||' | paste -sd' '))"
  if (( follow )); then exec tail -n "$lines" -F "$log"; else tail -n "$lines" "$log"; fi
}

cmd_env() {
  load_procs
  [[ -f "$APP" ]] || die "no cluster in $DIR yet: \`scripts/cluster.sh up\` first"
  local i gateways=()
  for i in "${!P_NAME[@]}"; do
    if [[ ${P_PORTS[$i]} == grpc=* ]]; then
      local p=${P_PORTS[$i]#grpc=}
      gateways+=("http://127.0.0.1:${p%% *}")
    fi
  done
  (( ${#gateways[@]} > 0 )) || die "the cluster in $DIR is not up"
  printf 'export TIDINGS_CONFIG=%q\n' "$CONFIG"
  printf 'export TIDINGS_GATEWAY_URL=%q\n' "${gateways[0]}"
  printf 'export TIDINGS_CLUSTER_GATEWAYS=%s\n' "$(IFS=,; echo "${gateways[*]}")"
  local line
  while IFS= read -r line; do printf 'export %s\n' "$line"; done <"$APP"
}

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    up) cmd_up ;;
    down|stop) cmd_down ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    env) cmd_env ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
