#!/usr/bin/env bash
# Real test servers for tidings: Apache Kafka (KRaft, single node) and Apache Cassandra,
# installed from Maven Central and run from <repo>/.servers/ on loopback.
#
# usage: scripts/servers.sh <command> [kafka|cassandra]
#   up [kafka|cassandra]      install if needed, start (or reuse) and wait until ready
#   down [kafka|cassandra]    stop (SIGTERM, then SIGKILL after a timeout); data is kept
#   status [kafka|cassandra]  running/stopped with addresses (exit 1 if any is not running)
#   logs [kafka|cassandra]    last ~200 lines of the server logs (call this when a test fails)
#   env                       export lines for TIDINGS_TEST_KAFKA, TIDINGS_TEST_KAFKA_TLS,
#                             TIDINGS_TEST_KAFKA_CA and TIDINGS_TEST_CQL
#   install [kafka|cassandra] only download the jars (no start)
#   check [kafka|cassandra]   run the full readiness checks against running servers
#   wipe                      stop both and delete their data (keeps the downloaded jars)
#
# Addresses: Kafka 127.0.0.1:19092 (PLAINTEXT), 127.0.0.1:19094 (SSL, with a test CA in
# .servers/kafka/tls/ca.pem), controller 19093; Cassandra CQL 127.0.0.1:19042 (storage 17000,
# JMX 127.0.0.1:17199). Files: scripts/servers/* are the templates,
# .servers/{kafka,cassandra}/{lib,conf,data,logs} the state. `up` and `down` take a lock
# (.servers/.lock), so concurrent callers are safe. `up` restarts a running Kafka whose
# rendered configuration (server.properties, TLS keystore, heap) differs from the one it was
# started with, and reuses it otherwise.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
SRC="$SCRIPT_DIR/servers"
STATE="$ROOT/.servers"

HOST=127.0.0.1
# Every port sits below Linux's ephemeral range (32768-60999 by default): a listener there
# can find its port taken by some client socket's local end (a CI run failed that way:
# Cassandra's `bind(..) failed: Address already in use` on 39042 with nothing listening).
KAFKA_PORT=19092
KAFKA_CONTROLLER_PORT=19093
KAFKA_TLS_PORT=19094
CQL_PORT=19042
CASSANDRA_STORAGE_PORT=17000
CASSANDRA_SSL_STORAGE_PORT=17001
CASSANDRA_JMX_PORT=17199

KAFKA_TIMEOUT=${TIDINGS_SERVERS_KAFKA_TIMEOUT:-120}
CASSANDRA_TIMEOUT=${TIDINGS_SERVERS_CASSANDRA_TIMEOUT:-240}
STOP_TIMEOUT=${TIDINGS_SERVERS_STOP_TIMEOUT:-60}
LOCK_TIMEOUT=900

KAFKA_HEAP="-Xms256m -Xmx512m"

# The Kafka SSL listener's test PKI, generated once into .servers/kafka/tls with keytool (part
# of every JDK, which this script needs anyway): a CA (ca.pem, for clients) and a broker key and
# certificate signed by it for 127.0.0.1 and localhost (broker.p12, the broker's keystore).
# Change TLS_RECIPE to make the next `up` generate new ones (and restart Kafka).
TLS_SAN="ip:127.0.0.1,dns:localhost"
TLS_DAYS=3650
TLS_PASSWORD=tidings-test-only
TLS_RECIPE="keytool RSA-2048 CA + broker san=$TLS_SAN days=$TLS_DAYS v1"

if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
  JAVA="$JAVA_HOME/bin/java"; JAVAC="$JAVA_HOME/bin/javac"; KEYTOOL="$JAVA_HOME/bin/keytool"
else
  JAVA=java; JAVAC=javac; KEYTOOL=keytool
fi
PYTHON=${PYTHON:-python3}

# ---------------------------------------------------------------------------------------------
# helpers

say()  { printf '%s\n' "servers: $*" >&2; }
rel()  { local p=$1; printf '%s' "${p#"$ROOT"/}"; }
die()  { printf '%s\n' "servers.sh: error: $*" >&2; exit 1; }

# die with a message and the tail of a log file
die_log() {
  local msg=$1; shift
  printf '%s\n' "servers.sh: error: $msg" >&2
  local f
  for f in "$@"; do
    if [[ -s "$f" ]]; then
      printf '%s\n' "----- last 80 lines of $(rel "$f") -----" >&2
      tail -n 80 "$f" >&2 || true
      printf '%s\n' "----- end of $(rel "$f") -----" >&2
    fi
  done
  printf '%s\n' "servers.sh: error: $msg" >&2
  exit 1
}

now() { date +%s; }

# warn when this machine's ephemeral range covers one of our ports (see the note at HOST)
warn_ephemeral_ports() {
  local lo hi p
  read -r lo hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || return 0
  for p in $KAFKA_PORT $KAFKA_CONTROLLER_PORT $KAFKA_TLS_PORT $CQL_PORT \
           $CASSANDRA_STORAGE_PORT $CASSANDRA_SSL_STORAGE_PORT $CASSANDRA_JMX_PORT; do
    if (( p >= lo && p <= hi )); then
      say "WARNING: port $p lies in this machine's ephemeral range $lo-$hi (net.ipv4.ip_local_port_range): a client socket may hold it and a server fail to bind"
    fi
  done
}

port_open() { # host port
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

port_owner() { # port -> "pid N (cmd)" or "unknown process"
  local line
  line=$(ss -ltnpH "sport = :$1" 2>/dev/null | head -n 1 || true)
  if [[ "$line" =~ pid=([0-9]+) ]]; then
    local pid=${BASH_REMATCH[1]}
    printf 'pid %s (%s)' "$pid" "$(tr '\0\n\t' '   ' <"/proc/$pid/cmdline" 2>/dev/null | tr -s ' ' | cut -c1-120)"
  else
    printf 'an unknown process'
  fi
}

sha() { cat "$@" | sha256sum | cut -c1-16; }  # content hash of files

pom_version() { # pom property-name
  sed -n "s:.*<$2>\(.*\)</$2>.*:\1:p" "$1" | head -n 1
}

KAFKA_VERSION=$(pom_version "$SRC/kafka-pom.xml" kafka.version)
CASSANDRA_VERSION=$(pom_version "$SRC/cassandra-pom.xml" cassandra.version)

dir_of()  { printf '%s' "$STATE/$1"; }
pidfile() { printf '%s' "$STATE/$1/$1.pid"; }
marker()  { printf '%s' "-Dtidings.server=$STATE/$1"; }

addr_of() {
  case $1 in
    kafka) printf '%s:%s' "$HOST" "$KAFKA_PORT" ;;
    cassandra) printf '%s:%s' "$HOST" "$CQL_PORT" ;;
  esac
}
port_of() {
  case $1 in
    kafka) printf '%s' "$KAFKA_PORT" ;;
    cassandra) printf '%s' "$CQL_PORT" ;;
  esac
}
main_log() {
  case $1 in
    kafka) printf '%s' "$STATE/kafka/logs/server.log" ;;
    cassandra) printf '%s' "$STATE/cassandra/logs/system.log" ;;
  esac
}
out_log() { printf '%s' "$STATE/$1/logs/$1.out"; }

# pid of our server process for $1, or empty (also cleans a stale pid file)
our_pid() {
  local f pid
  f=$(pidfile "$1")
  [[ -f "$f" ]] || return 0
  pid=$(cat "$f" 2>/dev/null || true)
  if [[ "$pid" =~ ^[0-9]+$ ]] && [[ -r "/proc/$pid/cmdline" ]] \
     && tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$(marker "$1")"; then
    printf '%s' "$pid"
  fi
}

check_java() {
  command -v "$JAVA" >/dev/null 2>&1 || die "java not found (need a JDK 17+; set JAVA_HOME or PATH)"
  local v
  v=$("$JAVA" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1)
  [[ -n "$v" && "$v" -ge 17 ]] || die "need Java 17+, found: $("$JAVA" -version 2>&1 | head -n 1)"
}

# ---------------------------------------------------------------------------------------------
# install: resolve the server's runtime classpath from Maven Central into .servers/<name>/lib

needs_install() { # name -> 0 if .servers/<name>/lib is missing or from another version of the pom
  local lib; lib="$(dir_of "$1")/lib"
  ! [[ -f "$lib/.installed" && "$(cat "$lib/.installed")" == "$(sha "$SRC/$1-pom.xml")" ]]
}

install_one() { # name
  local name=$1 pom lib stamp tmp logf t0 n
  pom="$SRC/$name-pom.xml"
  lib="$(dir_of "$name")/lib"
  stamp=$(sha "$pom")
  needs_install "$name" || return 0
  command -v mvn >/dev/null 2>&1 || die "mvn not found (Maven is needed to fetch $name from Maven Central)"
  mkdir -p "$(dir_of "$name")/logs"
  logf="$(dir_of "$name")/logs/install.log"
  tmp="$lib.tmp.$$"
  rm -rf "$tmp"
  local version
  version=$([[ $name == kafka ]] && echo "$KAFKA_VERSION" || echo "$CASSANDRA_VERSION")
  say "installing $name $version from Maven Central into $(rel "$lib") (only when missing or the pom changed; log: $(rel "$logf"))..."
  t0=$(now)
  # run from a scratch dir so Maven leaves nothing behind in scripts/servers
  local work="$(dir_of "$name")/mvn-work"
  mkdir -p "$work"
  cp "$pom" "$work/pom.xml"
  if ! (cd "$work" && mvn -B -ntp -f pom.xml \
          dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" \
          >"$logf" 2>&1 9>&-); then
    rm -rf "$tmp"
    die_log "mvn could not resolve $name $version from Maven Central (see $(rel "$logf"))" "$logf"
  fi
  n=$(find "$tmp" -name '*.jar' | wc -l)
  [[ "$n" -gt 0 ]] || die_log "mvn copied no jars for $name (see $(rel "$logf"))" "$logf"
  echo "$stamp" >"$tmp/.installed"
  rm -rf "$lib"
  mv "$tmp" "$lib"
  rm -rf "$work"
  say "installed $name $version: $n jars, $(du -sh "$lib" | cut -f1) in $(( $(now) - t0 ))s"
}

# ---------------------------------------------------------------------------------------------
# Kafka

tls_dir() { printf '%s' "$STATE/kafka/tls"; }

kt() { # keytool args... (small heap, quick start)
  "$KEYTOOL" -J-Xmx128m -J-XX:TieredStopAtLevel=1 "$@" 9>&-
}

# Generate the SSL listener's CA and broker certificate unless those of TLS_RECIPE exist.
kafka_tls_generate() {
  local tls tmp logf t0; tls=$(tls_dir)
  if [[ -f "$tls/.generated" && "$(cat "$tls/.generated")" == "$TLS_RECIPE" \
        && -s "$tls/ca.pem" && -s "$tls/broker.pem" && -s "$tls/broker.p12" ]]; then
    return 0
  fi
  command -v "$KEYTOOL" >/dev/null 2>&1 \
    || die "keytool not found (part of every JDK; needed for the Kafka TLS listener's test certificates)"
  mkdir -p "$(dir_of kafka)/logs"
  logf="$(dir_of kafka)/logs/tls.log"
  tmp="$tls.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  say "generating a test CA and a broker certificate ($TLS_SAN) into $(rel "$tls")"
  t0=$(now)
  local pass=(-storetype PKCS12 -storepass "$TLS_PASSWORD")
  if ! {
    # the CA: self-signed, BasicConstraints CA:true
    kt -genkeypair -alias ca -keyalg RSA -keysize 2048 -validity "$TLS_DAYS" \
      -dname "CN=tidings test CA $(date -u +%Y%m%dT%H%M%SZ)" -ext bc:c -ext ku:c=keyCertSign,cRLSign \
      -keystore "$tmp/ca.p12" "${pass[@]}" \
    && kt -exportcert -rfc -alias ca -keystore "$tmp/ca.p12" "${pass[@]}" -file "$tmp/ca.pem" \
    && kt -genkeypair -alias broker -keyalg RSA -keysize 2048 -validity "$TLS_DAYS" \
      -dname "CN=127.0.0.1" -keystore "$tmp/broker.p12" "${pass[@]}" \
    && kt -certreq -alias broker -keystore "$tmp/broker.p12" "${pass[@]}" -file "$tmp/broker.csr" \
    && kt -gencert -rfc -alias ca -keystore "$tmp/ca.p12" "${pass[@]}" -validity "$TLS_DAYS" \
      -infile "$tmp/broker.csr" -outfile "$tmp/broker.pem" \
      -ext "san=$TLS_SAN" -ext ku:c=digitalSignature,keyEncipherment -ext eku=serverAuth \
    && kt -importcert -noprompt -alias ca -file "$tmp/ca.pem" -keystore "$tmp/broker.p12" "${pass[@]}" \
    && kt -importcert -alias broker -file "$tmp/broker.pem" -keystore "$tmp/broker.p12" "${pass[@]}" \
    && kt -delete -alias ca -keystore "$tmp/broker.p12" "${pass[@]}"
  } >"$logf" 2>&1; then
    rm -rf "$tmp"
    die_log "keytool could not generate the Kafka test certificates (see $(rel "$logf"))" "$logf"
  fi
  rm -f "$tmp/broker.csr"
  echo "$TLS_RECIPE" >"$tmp/.generated"
  rm -rf "$tls"
  mv "$tmp" "$tls"
  say "generated $(rel "$tls")/ca.pem and broker.p12 in $(( $(now) - t0 ))s"
}

# Does the SSL listener serve our current broker certificate? (TLS handshake with keytool)
kafka_tls_serves() { # [quiet]
  local tls want got; tls=$(tls_dir)
  want=$(kt -printcert -file "$tls/broker.pem" 2>/dev/null | sed -n 's/^[[:space:]]*SHA256: //p' | head -n 1)
  got=$(timeout 20 "$KEYTOOL" -J-Xmx128m -J-XX:TieredStopAtLevel=1 \
          -printcert -sslserver "$HOST:$KAFKA_TLS_PORT" 2>&1 9>&- || true)
  if [[ -n "$want" ]] && printf '%s\n' "$got" | sed -n 's/^[[:space:]]*SHA256: //p' | head -n 1 | grep -qxF -- "$want"; then
    return 0
  fi
  [[ -n "${1:-}" ]] || printf 'the SSL listener %s:%s does not serve %s (SHA256 %s): %s\n' \
    "$HOST" "$KAFKA_TLS_PORT" "$(rel "$tls/broker.pem")" "${want:-?}" \
    "$(printf '%s' "$got" | grep -v '^[[:space:]]*$' | head -n 3 | tr '\n' ' ')" >&2
  return 1
}

# What a running broker was started with: its rendered config, TLS keystore and heap.
kafka_stamp() {
  local d; d=$(dir_of kafka)
  { cat "$d/conf/server.properties" "$d/conf/log4j2.properties" "$(tls_dir)/broker.p12" 2>/dev/null
    printf '%s\n' "$KAFKA_HEAP"; } | sha256sum | cut -c1-16
}
launched_stamp_file() { printf '%s' "$(dir_of kafka)/conf/.launched"; }

kafka_render() {
  local d; d=$(dir_of kafka)
  mkdir -p "$d/conf" "$d/data" "$d/logs"
  kafka_tls_generate
  sed -e "s|@KAFKA_DIR@|$d|g" -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" \
      -e "s|@CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
      -e "s|@KAFKA_TLS_PORT@|$KAFKA_TLS_PORT|g" -e "s|@TLS_DIR@|$(tls_dir)|g" \
      -e "s|@TLS_PASSWORD@|$TLS_PASSWORD|g" \
      "$SRC/kafka-server.properties" >"$d/conf/server.properties.tmp"
  mv "$d/conf/server.properties.tmp" "$d/conf/server.properties"
  cp "$SRC/kafka-log4j2.properties" "$d/conf/log4j2.properties"
  cp "$SRC/kafka-tools-log4j2.properties" "$d/conf/tools-log4j2.properties"
}

kafka_tool() { # main-class args...
  local d; d=$(dir_of kafka)
  "$JAVA" -Xmx256m -cp "$d/lib/*" \
    -Dlog4j2.configurationFile="file:$d/conf/tools-log4j2.properties" "$@" 9>&-
}

kafka_format() {
  local d cid logf; d=$(dir_of kafka)
  [[ -f "$d/data/meta.properties" ]] && return 0
  logf="$d/logs/format.log"
  if [[ ! -s "$d/cluster.id" ]]; then
    kafka_tool kafka.tools.StorageTool random-uuid >"$d/cluster.id.tmp" 2>"$logf" \
      || die_log "kafka StorageTool random-uuid failed" "$logf"
    mv "$d/cluster.id.tmp" "$d/cluster.id"
  fi
  cid=$(tr -d '[:space:]' <"$d/cluster.id")
  say "formatting kafka storage (cluster id $cid) in $(rel "$d/data")"
  kafka_tool kafka.tools.StorageTool format -t "$cid" -c "$d/conf/server.properties" --standalone \
    >>"$logf" 2>&1 || die_log "kafka StorageTool format failed (see $(rel "$logf"))" "$logf"
}

kafka_compile_check() {
  local d stamp; d=$(dir_of kafka)
  stamp=$(sha "$SRC/KafkaCheck.java" "$d/lib/.installed")
  if [[ -f "$d/check/.stamp" && "$(cat "$d/check/.stamp")" == "$stamp" ]]; then return 0; fi
  command -v "$JAVAC" >/dev/null 2>&1 || die "javac not found (need a JDK 17+, not just a JRE)"
  rm -rf "$d/check"; mkdir -p "$d/check"
  "$JAVAC" -nowarn -d "$d/check" -cp "$d/lib/*" "$SRC/KafkaCheck.java" >"$d/logs/check-compile.log" 2>&1 \
    || die_log "could not compile scripts/servers/KafkaCheck.java" "$d/logs/check-compile.log"
  echo "$stamp" >"$d/check/.stamp"
}

kafka_check() { # ping|txn timeout-ms
  local d; d=$(dir_of kafka)
  "$JAVA" -Xmx128m -XX:TieredStopAtLevel=1 -cp "$d/check:$d/lib/*" \
    -Dlog4j2.configurationFile="file:$d/conf/tools-log4j2.properties" \
    KafkaCheck "$1" "$HOST:$KAFKA_PORT" "$2" 9>&-
}

kafka_launch() {
  local d; d=$(dir_of kafka)
  : >"$(out_log kafka)"
  # shellcheck disable=SC2086
  setsid "$JAVA" $KAFKA_HEAP -server \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -XX:ParallelGCThreads=2 -XX:ConcGCThreads=1 \
    -Djava.awt.headless=true \
    "-Xlog:gc*:file=$d/logs/gc.log:time,tags:filecount=3,filesize=10M" \
    -Dkafka.logs.dir="$d/logs" \
    -Dlog4j2.configurationFile="file:$d/conf/log4j2.properties" \
    "$(marker kafka)" \
    -cp "$d/lib/*" kafka.Kafka "$d/conf/server.properties" \
    </dev/null >>"$(out_log kafka)" 2>&1 9>&- &
  echo $! >"$(pidfile kafka)"
  kafka_stamp >"$(launched_stamp_file)"
}

# Restart our running broker if it was started with another configuration (e.g. before the
# SSL listener existed, or with an older certificate): `up` brings it to the current one.
kafka_restart_if_stale() {
  local pid launched current
  pid=$(our_pid kafka)
  [[ -n "$pid" ]] || return 0
  kafka_render
  current=$(kafka_stamp)
  launched=$(cat "$(launched_stamp_file)" 2>/dev/null || true)
  [[ "$launched" == "$current" ]] && return 0
  if [[ -z "$launched" ]]; then
    say "kafka (pid $pid) was started without a record of its configuration (before the SSL listener on $HOST:$KAFKA_TLS_PORT); restarting it with $(rel "$(dir_of kafka)/conf/server.properties")"
  else
    say "kafka's configuration changed since it started (server.properties, TLS keystore or heap); restarting it"
  fi
  stop_one kafka
}

# ---------------------------------------------------------------------------------------------
# Cassandra

cassandra_render() {
  local d; d=$(dir_of cassandra)
  mkdir -p "$d/conf/triggers" "$d/data" "$d/logs"
  sed -e "s|@CASSANDRA_DIR@|$d|g" -e "s|@CQL_PORT@|$CQL_PORT|g" \
      -e "s|@STORAGE_PORT@|$CASSANDRA_STORAGE_PORT|g" \
      -e "s|@SSL_STORAGE_PORT@|$CASSANDRA_SSL_STORAGE_PORT|g" \
      "$SRC/cassandra.yaml" >"$d/conf/cassandra.yaml.tmp"
  mv "$d/conf/cassandra.yaml.tmp" "$d/conf/cassandra.yaml"
  cp "$SRC/cassandra-logback.xml" "$d/conf/logback.xml"
}

cassandra_launch() {
  local d jamm opts=(); d=$(dir_of cassandra)
  mapfile -t opts < <(sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' "$SRC/cassandra-jvm.options" | grep -e '^-')
  jamm=$(ls "$d"/lib/jamm-*.jar 2>/dev/null | head -n 1 || true)
  [[ -n "$jamm" ]] && opts+=("-javaagent:$jamm")
  : >"$(out_log cassandra)"
  MALLOC_ARENA_MAX=4 setsid "$JAVA" "${opts[@]}" \
    "-Xlog:gc=info,safepoint=info:file=$d/logs/gc.log:time,uptime,pid,tid,level:filecount=3,filesize=10M" \
    -Dcassandra.config="file://$d/conf/cassandra.yaml" \
    -Dcassandra.storagedir="$d/data" \
    -Dcassandra.logdir="$d/logs" \
    -Dcassandra.triggers_dir="$d/conf/triggers" \
    -Dlogback.configurationFile="$d/conf/logback.xml" \
    -Dcassandra.jmx.local.port="$CASSANDRA_JMX_PORT" \
    -Dcom.sun.management.jmxremote.authenticate=false \
    -Dcassandra-foreground=yes \
    "$(marker cassandra)" \
    -cp "$d/conf:$d/lib/*" org.apache.cassandra.service.CassandraDaemon \
    </dev/null >>"$(out_log cassandra)" 2>&1 9>&- &
  echo $! >"$(pidfile cassandra)"
}

cql_ping() { # [timeout-seconds]
  "$PYTHON" "$SRC/cqlping.py" --host "$HOST" --port "$CQL_PORT" --timeout "${1:-5}" 9>&-
}

# ---------------------------------------------------------------------------------------------
# generic start / wait / stop

# Does the server answer real requests? (quick version, used for reuse decisions and status)
answers() { # name
  case $1 in
    kafka) port_open "$HOST" "$KAFKA_PORT" && kafka_check ping 10000 >/dev/null 2>&1 ;;
    cassandra) port_open "$HOST" "$CQL_PORT" && cql_ping 5 >/dev/null 2>&1 ;;
  esac
}

# answers, and for our kafka also its SSL listener is open (quick: no TLS handshake)
answers_fully() { # name
  answers "$1" || return 1
  [[ $1 != kafka || -z "$(our_pid kafka)" ]] || port_open "$HOST" "$KAFKA_TLS_PORT"
}

# Launch one server unless it already runs. Sets STARTED_<name>=1 if launched.
start_one() { # name
  local name=$1 pid port
  port=$(port_of "$name")
  pid=$(our_pid "$name")
  if [[ -n "$pid" ]]; then
    say "$name already running (pid $pid)"
    return 0
  fi
  rm -f "$(pidfile "$name")"
  if port_open "$HOST" "$port"; then
    if [[ $name == kafka ]]; then kafka_compile_check; fi
    if answers "$name"; then
      say "WARNING: $name port $HOST:$port is served by $(port_owner "$port"), not started from $(rel "$STATE"); reusing it"
      if [[ $name == kafka ]] && ! port_open "$HOST" "$KAFKA_TLS_PORT"; then
        say "WARNING: that kafka has no SSL listener on $HOST:$KAFKA_TLS_PORT; the TLS tests will fail (stop it and run 'scripts/servers.sh up')"
      fi
      return 0
    fi
    die "cannot start $name: port $HOST:$port is already in use by $(port_owner "$port") and it does not answer as $name"
  fi
  local other
  for other in $([[ $name == kafka ]] && echo "$KAFKA_TLS_PORT $KAFKA_CONTROLLER_PORT" || echo "$CASSANDRA_STORAGE_PORT $CASSANDRA_JMX_PORT"); do
    if port_open "$HOST" "$other"; then
      die "cannot start $name: port $HOST:$other is already in use by $(port_owner "$other")"
    fi
  done
  case $name in
    kafka)
      kafka_render
      kafka_format
      kafka_compile_check
      say "starting kafka $KAFKA_VERSION on $HOST:$KAFKA_PORT, SSL $HOST:$KAFKA_TLS_PORT (heap $KAFKA_HEAP)"
      kafka_launch
      ;;
    cassandra)
      cassandra_render
      say "starting cassandra $CASSANDRA_VERSION on $HOST:$CQL_PORT (heap $(grep -e '^-Xm[sx]' "$SRC/cassandra-jvm.options" | tr '\n' ' '| sed 's/ $//'))"
      cassandra_launch
      ;;
  esac
  printf -v "STARTED_$name" 1
}

wait_one() { # name
  local name=$1 timeout port what t0 elapsed last=0 pid
  port=$(port_of "$name")
  if [[ $name == kafka ]]; then timeout=$KAFKA_TIMEOUT; what="kafka broker"; else timeout=$CASSANDRA_TIMEOUT; what="cassandra CQL"; fi
  t0=$(now)
  pid=$(cat "$(pidfile "$name")" 2>/dev/null || true)
  local err="" ok=0
  while :; do
    elapsed=$(( $(now) - t0 ))
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$(pidfile "$name")"
      die_log "$name exited during startup after ${elapsed}s; see $(rel "$(main_log "$name")")" \
        "$(main_log "$name")" "$(out_log "$name")"
    fi
    if port_open "$HOST" "$port"; then
      if [[ $name == kafka ]]; then
        err=$(kafka_check ping 10000 2>&1 >/dev/null) && ok=1
      else
        err=$(cql_ping 5 2>&1 >/dev/null) && ok=1
      fi
      [[ $ok == 1 ]] && break
    else
      err="port $HOST:$port not open yet"
    fi
    elapsed=$(( $(now) - t0 ))
    if (( elapsed >= timeout )); then
      die_log "$what did not answer on $HOST:$port within ${timeout}s ($err); see $(rel "$(main_log "$name")") (pid ${pid:-?} left running: 'scripts/servers.sh up' waits for it again, 'scripts/servers.sh down' stops it)" \
        "$(main_log "$name")" "$(out_log "$name")"
    fi
    if (( elapsed - last >= 5 )); then
      say "waiting for $what on $HOST:$port (${elapsed}s)..."
      last=$elapsed
    fi
    sleep 1
  done
  if [[ $name == kafka ]]; then
    # the SSL listener serves the current broker certificate (opens with the plaintext one)
    while ! err=$(kafka_tls_serves 2>&1); do
      if (( $(now) - t0 >= timeout )); then
        die_log "kafka answered on $HOST:$port but not over TLS within ${timeout}s: $err; see $(rel "$(main_log kafka)")" \
          "$(main_log kafka)" "$(out_log kafka)"
      fi
      sleep 1
    done
    # one committed transaction + a consumer-group read: proves the transaction coordinator,
    # __transaction_state and __consumer_offsets work with replication factor 1
    local left=$(( timeout - ($(now) - t0) )); (( left < 30 )) && left=30
    if ! err=$(kafka_check txn $(( left * 1000 )) 2>&1); then
      die_log "kafka answered but a transactional produce/consume failed: $err; see $(rel "$(main_log kafka)")" \
        "$(main_log kafka)" "$(out_log kafka)"
    fi
  fi
  say "$name ready on $HOST:$port$([[ $name == kafka ]] && echo " and $HOST:$KAFKA_TLS_PORT (SSL)") after $(( $(now) - t0 ))s"
}

stop_one() { # name
  local name=$1 pid t0
  pid=$(our_pid "$name")
  if [[ -z "$pid" ]]; then
    rm -f "$(pidfile "$name")"
    if port_open "$HOST" "$(port_of "$name")"; then
      say "$name: not started from $(rel "$STATE"); port $(addr_of "$name") is served by $(port_owner "$(port_of "$name")"); leaving it alone"
    else
      say "$name: not running"
    fi
    return 0
  fi
  say "stopping $name (pid $pid)..."
  kill -TERM "$pid" 2>/dev/null || true
  t0=$(now)
  while kill -0 "$pid" 2>/dev/null; do
    if (( $(now) - t0 >= STOP_TIMEOUT )); then
      say "$name did not stop within ${STOP_TIMEOUT}s; killing it (pid $pid)"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 1
      break
    fi
    sleep 0.5
  done
  rm -f "$(pidfile "$name")"
  say "$name stopped after $(( $(now) - t0 ))s"
}

# ---------------------------------------------------------------------------------------------
# commands

take_lock() {
  mkdir -p "$STATE"
  exec 9>"$STATE/.lock"
  if ! flock -n 9; then
    say "another scripts/servers.sh is busy; waiting for its lock..."
    flock -w "$LOCK_TIMEOUT" 9 || die "timed out after ${LOCK_TIMEOUT}s waiting for $(rel "$STATE/.lock")"
  fi
}

targets() { # optional name -> list
  case "${1:-all}" in
    all|"") echo "kafka cassandra" ;;
    kafka|cassandra) echo "$1" ;;
    *) die "unknown server '$1' (expected kafka or cassandra)" ;;
  esac
}

cmd_install() {
  check_java
  take_lock
  local n
  for n in $(targets "${1:-}"); do install_one "$n"; done
}

cmd_up() {
  check_java
  command -v "$PYTHON" >/dev/null 2>&1 || die "python3 not found (needed for the CQL readiness probe)"
  local names n t0 pid
  names=$(targets "${1:-}")
  t0=$(now)
  take_lock
  warn_ephemeral_ports
  # install+launch each in turn (Kafka boots while Cassandra's jars download), then wait for all
  for n in $names; do
    if needs_install "$n" && [[ -n "$(our_pid "$n")" ]]; then
      say "$n jars are out of date with scripts/servers/$n-pom.xml; restarting $n"
      stop_one "$n"
    fi
    install_one "$n"
    [[ $n == kafka ]] && kafka_restart_if_stale
    start_one "$n"
  done
  for n in $names; do
    local started="STARTED_$n"
    if [[ -n "${!started:-}" ]]; then
      wait_one "$n"
    elif ! answers_fully "$n"; then
      # running but not answering yet (e.g. another `up` was killed while waiting): wait for it
      wait_one "$n"
    fi
  done
  for n in $names; do
    pid=$(our_pid "$n")
    printf '%-9s %s%s\n' "$n" "$(addr_of "$n")" "${pid:+  (pid $pid)}"
    if [[ $n == kafka ]]; then
      printf '%-9s %s  (SSL, CA %s)\n' kafka-tls "$HOST:$KAFKA_TLS_PORT" "$(rel "$(tls_dir)/ca.pem")"
    fi
  done
  say "up in $(( $(now) - t0 ))s"
}

cmd_down() {
  take_lock
  local n
  for n in $(targets "${1:-}"); do stop_one "$n"; done
}

cmd_status() {
  local n pid state rc=0
  for n in $(targets "${1:-}"); do
    pid=$(our_pid "$n")
    if [[ -n "$pid" ]]; then
      if port_open "$HOST" "$(port_of "$n")"; then state="running (pid $pid)"; else state="starting (pid $pid, port not open yet)"; rc=1; fi
    elif port_open "$HOST" "$(port_of "$n")"; then
      state="port open, served by $(port_owner "$(port_of "$n")") (not started from $(rel "$STATE"))"
    else
      state="stopped"; rc=1
    fi
    printf '%-9s %-16s %s\n' "$n" "$(addr_of "$n")" "$state"
    if [[ $n == kafka ]]; then
      if port_open "$HOST" "$KAFKA_TLS_PORT"; then
        state="open (SSL, CA $(rel "$(tls_dir)/ca.pem"))"
      elif [[ -n "$pid" ]] && port_open "$HOST" "$KAFKA_PORT"; then
        state="NOT open: this broker was started without the SSL listener; 'scripts/servers.sh up' restarts it"; rc=1
      else
        state="closed"
      fi
      printf '%-9s %-16s %s\n' kafka-tls "$HOST:$KAFKA_TLS_PORT" "$state"
    fi
  done
  return $rc
}

cmd_check() {
  check_java
  local n err
  for n in $(targets "${1:-}"); do
    case $n in
      kafka)
        [[ -f "$STATE/kafka/lib/.installed" ]] || die "kafka is not installed (run scripts/servers.sh up)"
        kafka_compile_check
        err=$(kafka_check ping 10000 2>&1) || die "$err"
        err=$(kafka_check txn 60000 2>&1) || die "$err"
        echo "kafka     $(addr_of kafka)  ok (admin + transactional produce/consume)"
        err=$(kafka_tls_serves 2>&1) || die "$err"
        echo "kafka-tls $HOST:$KAFKA_TLS_PORT  ok (serves $(rel "$(tls_dir)/broker.pem"), signed by $(rel "$(tls_dir)/ca.pem"))"
        ;;
      cassandra)
        err=$(cql_ping 5 2>&1) || die "$err"
        echo "cassandra $(addr_of cassandra)  ok ($err)"
        ;;
    esac
  done
}

cmd_logs() {
  local n f
  for n in $(targets "${1:-}"); do
    for f in "$(main_log "$n")" "$(out_log "$n")"; do
      if [[ -s "$f" ]]; then
        local lines=200; [[ "$f" == "$(out_log "$n")" ]] && lines=50
        echo "===== $n: last $lines lines of $(rel "$f") ====="
        tail -n "$lines" "$f"
      elif [[ "$f" == "$(main_log "$n")" ]]; then
        echo "===== $n: no log at $(rel "$f") ====="
      fi
    done
  done
}

cmd_env() {
  echo "export TIDINGS_TEST_KAFKA=$(addr_of kafka)"
  echo "export TIDINGS_TEST_KAFKA_TLS=$HOST:$KAFKA_TLS_PORT"
  printf 'export TIDINGS_TEST_KAFKA_CA=%q\n' "$(tls_dir)/ca.pem"
  echo "export TIDINGS_TEST_CQL=$(addr_of cassandra)"
}

cmd_wipe() {
  take_lock
  local n
  for n in kafka cassandra; do
    stop_one "$n"
    rm -rf "$STATE/$n/data" "$STATE/$n/logs" "$STATE/$n/cluster.id"
  done
  say "wiped data and logs (jars kept in $(rel "$STATE")/*/lib)"
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

cmd=${1:-}
shift || true
case "${1:-}" in
  ""|kafka|cassandra) ;;
  *) die "unknown server '$1' (expected kafka or cassandra)" ;;
esac
case "$cmd" in
  up) cmd_up "$@" ;;
  down|stop) cmd_down "$@" ;;
  status) cmd_status "$@" ;;
  logs) cmd_logs "$@" ;;
  env) cmd_env ;;
  install) cmd_install "$@" ;;
  check) cmd_check "$@" ;;
  wipe) cmd_wipe ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
