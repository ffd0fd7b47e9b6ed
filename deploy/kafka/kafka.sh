#!/usr/bin/env bash
# Run an Apache Kafka node (KRaft, broker+controller in one JVM) for development and tests, from
# the Maven Central jars: a single-node broker, or one node of a small cluster on loopback
# (--node-id, --voters, --cluster-id). No Kafka distribution, no Docker, no ZooKeeper.
#
# The jars are fetched once with Maven into ${DWELL_CACHE:-$HOME/.cache/dwell}/kafka-<version>/libs;
# the Kafka version is pinned in pom.xml next to this script (property kafka.version).
#
# Exit status: 0 ok, 1 failure, 2 usage error, 3 not running (status),
#              4 not installed (java or mvn missing, or the fetch failed).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
POM="$SCRIPT_DIR/pom.xml"
LOG4J_CONF="$SCRIPT_DIR/log4j2.properties"
PROG=$(basename "$0")

usage() {
  cat <<EOF
Usage: $PROG <command> [options]

Run a local Apache Kafka node (KRaft, broker and controller in one JVM) from the Maven
Central jars: a single-node broker, or one node of a cluster on loopback.

Commands:
  fetch                         fetch the Kafka jars into the cache (once; no-op when complete)
  start --port P --controller-port C --data DIR [--heap 512m] [--timeout 60] [--owner-pid PID]
        [--node-id K --voters ID@HOST:PORT,... --cluster-id ID]
                                format DIR (first time only), start the node in the background,
                                wait until 127.0.0.1:P accepts connections; with --owner-pid the
                                node is stopped when process PID exits.
                                Alone, the node is a single-node cluster (node id 1). For node K of
                                a cluster, give every node the same --voters (the static
                                controller quorum, e.g. 1@127.0.0.1:9095,2@127.0.0.1:9096,...;
                                node K's entry must name --controller-port) and the same
                                --cluster-id (22 characters of URL-safe base64, not starting with
                                '-'; needed to format a node of a multi-node quorum). Start the
                                nodes together: a node answers once a majority of voters is up.
                                With N voters, topics default to replication factor min(N,3) and
                                min.insync.replicas max(1,rf-1), internal topics too.
  stop --data DIR [--timeout 30] [--kill]
                                SIGTERM the node, SIGKILL after the timeout (seconds); with
                                --kill, SIGKILL at once (a crash, for fault tests)
  status --data DIR             print running/stopped; exit 0 if running, 3 if not
  help                          show this message

Files in DIR (one DIR per node): server.properties, logs/ (the Kafka log dirs; kept across
restarts), server.log (broker log), server.out (JVM stdout/stderr), kafka.pid.

Environment:
  DWELL_CACHE             cache root (default \$HOME/.cache/dwell)
  DWELL_MVN_ARGS          extra arguments for mvn during fetch (e.g. -o, -Dmaven.repo.local=DIR)
  DWELL_KAFKA_JVM_OPTS    extra JVM options for the broker
  JAVA                    java executable (default: java on PATH, or \$JAVA_HOME/bin/java)

Exit status: 0 ok, 1 failure, 2 usage error, 3 not running (status), 4 not installed.
EOF
}

die() { echo "$PROG: $*" >&2; exit 1; }
die_usage() { echo "$PROG: $*" >&2; echo "Run '$PROG help' for usage." >&2; exit 2; }
die_install() { echo "$PROG: $*" >&2; exit 4; }
log() { echo "$PROG: $*" >&2; }

KAFKA_VERSION=$(sed -n 's:.*<kafka\.version>[[:space:]]*\([^<[:space:]]*\)[[:space:]]*</kafka\.version>.*:\1:p' "$POM" | head -n 1)
[[ -n $KAFKA_VERSION ]] || die "cannot read <kafka.version> from $POM"
CACHE_ROOT=${DWELL_CACHE:-${HOME:?HOME is not set}/.cache/dwell}
KAFKA_DIR="$CACHE_ROOT/kafka-$KAFKA_VERSION"
LIBS="$KAFKA_DIR/libs"
MARKER_NAME=".dwell-fetch-complete"

# ---------------------------------------------------------------------------------- helpers

digest() {  # digest FILE -> sha256 hex (falls back to cksum)
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then shasum -a 256 "$1" | cut -d' ' -f1
  else cksum "$1" | cut -d' ' -f1-2 | tr ' ' '-'
  fi
}

with_lock() {  # with_lock LOCKFILE CMD... : run CMD holding an exclusive flock (when flock exists)
  local lockfile=$1; shift
  if command -v flock >/dev/null 2>&1; then
    (
      exec 9>"$lockfile"
      flock 9
      "$@"
    )
  else
    "$@"
  fi
}

pid_alive() {  # pid_alive PID: true if PID exists and is not a zombie
  local pid=${1:-} stat state
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  if [[ -r /proc/self/stat ]]; then
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    state=${stat##*) }
    state=${state%% *}
    [[ $state != Z && $state != X ]]
  else
    kill -0 "$pid" 2>/dev/null
  fi
}

is_broker_pid() {  # is_broker_pid PID: true if PID is alive and runs kafka.Kafka
  local pid=${1:-} cmd
  pid_alive "$pid" || return 1
  if [[ -r /proc/$pid/cmdline ]]; then
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  else
    cmd=$(ps -p "$pid" -o command= 2>/dev/null) || return 1
  fi
  [[ $cmd == *kafka.Kafka* ]]
}

port_open() {  # port_open PORT: true if 127.0.0.1:PORT accepts a TCP connection
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

read_pid() {  # read_pid FILE: print the pid stored in FILE (empty if none)
  [[ -f $1 ]] || return 0
  local pid
  pid=$(tr -dc '0-9' <"$1" 2>/dev/null || true)
  echo "$pid"
}

prop() {  # prop FILE KEY: value of KEY in a .properties file
  [[ -f $1 ]] || return 0
  sed -n "s/^$2=//p" "$1" | tail -n 1
}

find_java() {
  if [[ -n ${JAVA:-} ]]; then command -v "$JAVA" || return 1
  elif [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then echo "$JAVA_HOME/bin/java"
  elif command -v java >/dev/null 2>&1; then command -v java
  else return 1
  fi
}

check_int() {  # check_int NAME VALUE
  [[ $2 =~ ^[0-9]+$ ]] || die_usage "$1 must be a non-negative integer, got '$2'"
}

check_port() {  # check_port NAME VALUE
  check_int "$1" "$2"
  (( $2 >= 1 && $2 <= 65535 )) || die_usage "$1 must be in 1..65535, got '$2'"
}

abs_dir() {  # abs_dir DIR: create DIR and print its absolute path
  mkdir -p "$1"
  (cd "$1" && pwd -P)
}

# ------------------------------------------------------------------------------------ fetch

fetch_complete() {
  [[ -f $LIBS/$MARKER_NAME ]] && [[ $(head -n 1 "$LIBS/$MARKER_NAME") == "$(digest "$POM")" ]]
}

do_fetch() {
  if fetch_complete; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die_install "mvn (Apache Maven) is not on PATH; it is needed once to fetch the Kafka $KAFKA_VERSION jars into $LIBS"
  local tmp old n started
  tmp=$(mktemp -d "$KAFKA_DIR/libs.tmp.XXXXXX")
  log "fetching Apache Kafka $KAFKA_VERSION jars from Maven into $LIBS ..."
  started=$SECONDS
  # shellcheck disable=SC2086  # DWELL_MVN_ARGS is a list of words on purpose
  if ! mvn -q -B -Dstyle.color=never -f "$POM" ${DWELL_MVN_ARGS:-} dependency:copy-dependencies \
      -DoutputDirectory="$tmp" -DincludeScope=runtime >&2; then
    rm -rf "$tmp"
    die_install "fetching the Kafka $KAFKA_VERSION jars with mvn failed (see the output above)"
  fi
  if [[ ! -f $tmp/kafka_2.13-$KAFKA_VERSION.jar ]]; then
    rm -rf "$tmp"
    die_install "mvn finished but kafka_2.13-$KAFKA_VERSION.jar is missing from the fetched jars"
  fi
  n=$(find "$tmp" -maxdepth 1 -name '*.jar' | wc -l | tr -d ' ')
  printf '%s\nkafka %s, %s jars, fetched %s\n' "$(digest "$POM")" "$KAFKA_VERSION" "$n" \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$tmp/$MARKER_NAME"
  # Swap in atomically: a folder named libs/ with the marker is complete by construction.
  if [[ -e $LIBS ]]; then
    old="$KAFKA_DIR/libs.old.$$"
    mv "$LIBS" "$old"
    mv "$tmp" "$LIBS"
    rm -rf "$old"
  else
    mv "$tmp" "$LIBS"
  fi
  log "fetched $n jars in $((SECONDS - started)) s"
}

cmd_fetch() {
  [[ $# -eq 0 ]] || die_usage "fetch takes no arguments"
  mkdir -p "$KAFKA_DIR" || die_install "cannot create the cache folder $KAFKA_DIR"
  with_lock "$KAFKA_DIR/.fetch.lock" do_fetch
  echo "$LIBS"
}

# ------------------------------------------------------------------------------------ start

write_properties() {  # write_properties FILE PORT CPORT DATA NODE_ID VOTERS
  local voters=$6 n rf min_isr
  n=$(tr ',' '\n' <<<"$voters" | grep -c .)
  rf=$(( n < 3 ? n : 3 ))
  min_isr=$(( rf > 1 ? rf - 1 : 1 ))
  cat >"$1" <<EOF
# Written by deploy/kafka/kafka.sh start; rewritten at every start.
process.roles=broker,controller
node.id=$5
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$2,CONTROLLER://127.0.0.1:$3
advertised.listeners=PLAINTEXT://127.0.0.1:$2
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$4/logs
num.partitions=4
default.replication.factor=$rf
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$min_isr
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$min_isr
EOF
}

print_tail() {  # print_tail DATA OUT_OFFSET LOG_OFFSET: what this start wrote, for a failure
  local data=$1 f offset
  for f in "$data/server.out:$2" "$data/server.log:$3"; do
    offset=${f##*:}
    f=${f%:*}
    if [[ -s $f ]] && (( $(file_size "$f") > offset )); then
      echo "---- last lines of $f ----" >&2
      tail -c +"$((offset + 1))" "$f" | tail -n 40 >&2
    fi
  done
}

file_size() {  # file_size FILE: size in bytes, 0 if missing
  if [[ -f $1 ]]; then wc -c <"$1" | tr -d ' '; else echo 0; fi
}

start_watchdog() {  # start_watchdog DATA OWNER BROKER: stop BROKER when OWNER exits
  local data=$1 owner=$2 broker=$3
  # The watchdog is a separate bash process; it gets the helper function by its source text.
  # shellcheck disable=SC2016  # expanded by the inner bash
  setsid nohup bash -c "$(declare -f pid_alive)"'
    owner=$1 broker=$2
    while pid_alive "$owner" && pid_alive "$broker"; do sleep 1; done
    pid_alive "$broker" || exit 0
    kill -TERM "$broker" 2>/dev/null || exit 0
    for _ in $(seq 1 30); do pid_alive "$broker" || exit 0; sleep 1; done
    kill -KILL "$broker" 2>/dev/null || true
  ' dwell-kafka-watchdog "$owner" "$broker" >/dev/null 2>&1 </dev/null 9>&- &
  echo $! >"$data/watchdog.pid"
}

do_start() {  # do_start PORT CPORT DATA HEAP TIMEOUT OWNER NODE_ID VOTERS CLUSTER_ID
  local port=$1 cport=$2 data=$3 heap=$4 timeout=$5 owner=$6 node_id=$7 voters=$8 cluster_id=$9
  local pidfile="$data/kafka.pid" pid java deadline running_port out_offset log_offset stored

  pid=$(read_pid "$pidfile")
  if [[ -n $pid ]] && is_broker_pid "$pid"; then
    running_port=$(prop "$data/server.properties" listeners | sed -n 's/^PLAINTEXT:\/\/[^,]*:\([0-9]*\).*/\1/p')
    if [[ $running_port == "$port" ]]; then
      log "already running (pid $pid, 127.0.0.1:$port)"
      echo "127.0.0.1:$port"
      return 0
    fi
    die "a broker is already running on this data folder (pid $pid, port ${running_port:-?}); stop it first"
  fi
  rm -f "$pidfile"

  if port_open "$port"; then die "port $port on 127.0.0.1 is already in use"; fi
  if port_open "$cport"; then die "controller port $cport on 127.0.0.1 is already in use"; fi

  java=$(find_java) || die_install "java is not on PATH (Kafka $KAFKA_VERSION needs Java 17 or newer)"

  write_properties "$data/server.properties" "$port" "$cport" "$data" "$node_id" "$voters"
  if [[ -f $data/logs/meta.properties ]]; then
    stored=$(prop "$data/logs/meta.properties" cluster.id)
    if [[ -n $cluster_id && -n $stored && $stored != "$cluster_id" ]]; then
      die "$data/logs belongs to cluster $stored, not $cluster_id; remove it or pass --cluster-id $stored"
    fi
  else
    if [[ -z $cluster_id ]]; then
      [[ $voters == *,* ]] && die_usage "formatting a node of a multi-node quorum needs --cluster-id (the same on every node)"
      cluster_id=$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
      # An id that starts with '-' reads as an option to kafka-storage (1 start in 64 failed).
      if [[ $cluster_id == -* ]]; then cluster_id="A${cluster_id:1}"; fi
    fi
    log "formatting $data/logs (cluster id $cluster_id)"
    if ! "$java" -cp "$LIBS/*" \
        -Dlog4j2.configurationFile="$LOG4J_CONF" -Dkafka.logs.dir="$data" -Dkafka.log.file=format.log \
        kafka.tools.StorageTool format -t "$cluster_id" -c "$data/server.properties" \
        >"$data/format.out" 2>&1; then
      cat "$data/format.out" >&2
      die "formatting the storage in $data/logs failed"
    fi
  fi

  local -a jvm_opts=("-Xmx$heap" "-Xms$heap" -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
                     "-Dlog4j2.configurationFile=$LOG4J_CONF" "-Dkafka.logs.dir=$data")
  # shellcheck disable=SC2206  # DWELL_KAFKA_JVM_OPTS is a list of words on purpose
  [[ -n ${DWELL_KAFKA_JVM_OPTS:-} ]] && jvm_opts+=(${DWELL_KAFKA_JVM_OPTS})

  # setsid: own session, so a Ctrl-C in the starting terminal does not reach the broker.
  # In a non-interactive script the background child is no process-group leader, so setsid
  # and nohup exec in place and $! is the JVM's pid. 9>&- keeps the lock fd out of the JVM.
  out_offset=$(file_size "$data/server.out")
  log_offset=$(file_size "$data/server.log")
  echo "==== $(date -u +%Y-%m-%dT%H:%M:%SZ) starting Kafka $KAFKA_VERSION on 127.0.0.1:$port (node $node_id)" \
    >>"$data/server.out"
  setsid nohup "$java" "${jvm_opts[@]}" -cp "$LIBS/*" kafka.Kafka "$data/server.properties" \
    >>"$data/server.out" 2>&1 </dev/null 9>&- &
  pid=$!
  echo "$pid" >"$pidfile"
  # Started at once, so that the owner dying at any moment from here on stops the broker.
  if [[ -n $owner ]]; then start_watchdog "$data" "$owner" "$pid"; fi

  deadline=$((SECONDS + timeout))
  while :; do
    if ! pid_alive "$pid"; then
      rm -f "$pidfile"
      log "the broker exited during start-up"
      print_tail "$data" "$out_offset" "$log_offset"
      exit 1
    fi
    if port_open "$port"; then break; fi
    if (( SECONDS >= deadline )); then
      log "the broker did not accept connections on 127.0.0.1:$port within $timeout s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      rm -f "$pidfile"
      print_tail "$data" "$out_offset" "$log_offset"
      exit 1
    fi
    sleep 0.2
  done

  log "running (node $node_id, pid $pid, 127.0.0.1:$port, data $data)"
  echo "127.0.0.1:$port"
}

cmd_start() {
  local port="" cport="" data="" heap=512m timeout=60 owner="" node_id="" voters="" cluster_id=""
  local entry
  while [[ $# -gt 0 ]]; do
    case $1 in
      --port) port=${2:-}; shift 2 || die_usage "--port needs a value" ;;
      --controller-port) cport=${2:-}; shift 2 || die_usage "--controller-port needs a value" ;;
      --data) data=${2:-}; shift 2 || die_usage "--data needs a value" ;;
      --heap) heap=${2:-}; shift 2 || die_usage "--heap needs a value" ;;
      --timeout) timeout=${2:-}; shift 2 || die_usage "--timeout needs a value" ;;
      --owner-pid) owner=${2:-}; shift 2 || die_usage "--owner-pid needs a value" ;;
      --node-id) node_id=${2:-}; shift 2 || die_usage "--node-id needs a value" ;;
      --voters) voters=${2:-}; shift 2 || die_usage "--voters needs a value" ;;
      --cluster-id) cluster_id=${2:-}; shift 2 || die_usage "--cluster-id needs a value" ;;
      *) die_usage "start: unknown argument '$1'" ;;
    esac
  done
  [[ -n $port ]] || die_usage "start needs --port"
  [[ -n $cport ]] || die_usage "start needs --controller-port"
  [[ -n $data ]] || die_usage "start needs --data"
  check_port --port "$port"
  check_port --controller-port "$cport"
  [[ $port != "$cport" ]] || die_usage "--port and --controller-port must differ"
  [[ $heap =~ ^[0-9]+[kKmMgG]?$ ]] || die_usage "--heap must look like 512m or 2g, got '$heap'"
  check_int --timeout "$timeout"
  if [[ -n $owner ]]; then check_int --owner-pid "$owner"; fi
  node_id=${node_id:-1}
  check_int --node-id "$node_id"
  node_id=$((10#$node_id))
  voters=${voters:-$node_id@127.0.0.1:$cport}
  [[ $voters =~ ^[0-9]+@[^@:,]+:[0-9]+(,[0-9]+@[^@:,]+:[0-9]+)*$ ]] \
    || die_usage "--voters must look like 1@127.0.0.1:9095,2@127.0.0.1:9096, got '$voters'"
  entry=$(tr ',' '\n' <<<"$voters" | grep -E "^0*$node_id@" || true)
  [[ -n $entry ]] || die_usage "--voters has no entry for node $node_id: '$voters'"
  [[ $(grep -c . <<<"$entry") == 1 ]] || die_usage "--voters names node $node_id twice: '$voters'"
  [[ ${entry##*:} == "$cport" ]] \
    || die_usage "node $node_id's entry in --voters ($entry) must use --controller-port $cport"
  if [[ -n $cluster_id && ! $cluster_id =~ ^[A-Za-z0-9_][A-Za-z0-9_-]{21}$ ]]; then
    die_usage "--cluster-id must be 22 characters of URL-safe base64 not starting with '-', got '$cluster_id'"
  fi

  mkdir -p "$KAFKA_DIR" || die_install "cannot create the cache folder $KAFKA_DIR"
  with_lock "$KAFKA_DIR/.fetch.lock" do_fetch
  data=$(abs_dir "$data")
  with_lock "$data/.kafka.sh.lock" do_start "$port" "$cport" "$data" "$heap" "$timeout" "$owner" \
    "$node_id" "$voters" "$cluster_id"
}

# ------------------------------------------------------------------------------------- stop

do_stop() {  # do_stop DATA TIMEOUT SIGNAL (TERM: graceful, then KILL after TIMEOUT; KILL: at once)
  local data=$1 timeout=$2 signal=$3 pidfile="$1/kafka.pid" pid wpid deadline
  wpid=$(read_pid "$data/watchdog.pid")
  if [[ -n $wpid ]] && pid_alive "$wpid"; then kill -TERM "$wpid" 2>/dev/null || true; fi
  rm -f "$data/watchdog.pid"

  pid=$(read_pid "$pidfile")
  if [[ -z $pid ]] || ! is_broker_pid "$pid"; then
    rm -f "$pidfile"
    echo "not running (data $data)"
    return 0
  fi
  kill "-$signal" "$pid" 2>/dev/null || true
  deadline=$((SECONDS + timeout))
  while pid_alive "$pid" && (( SECONDS < deadline )); do sleep 0.1; done
  if pid_alive "$pid"; then
    log "pid $pid still running after $timeout s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while pid_alive "$pid"; do sleep 0.1; done
  fi
  rm -f "$pidfile"
  if [[ $signal == KILL ]]; then echo "killed (pid $pid)"; else echo "stopped (pid $pid)"; fi
}

cmd_stop() {
  local data="" timeout=30 signal=TERM
  while [[ $# -gt 0 ]]; do
    case $1 in
      --data) data=${2:-}; shift 2 || die_usage "--data needs a value" ;;
      --timeout) timeout=${2:-}; shift 2 || die_usage "--timeout needs a value" ;;
      --kill) signal=KILL; shift ;;
      *) die_usage "stop: unknown argument '$1'" ;;
    esac
  done
  [[ -n $data ]] || die_usage "stop needs --data"
  check_int --timeout "$timeout"
  if [[ ! -d $data ]]; then
    echo "not running (no data folder $data)"
    return 0
  fi
  data=$(cd "$data" && pwd -P)
  with_lock "$data/.kafka.sh.lock" do_stop "$data" "$timeout" "$signal"
}

# ----------------------------------------------------------------------------------- status

cmd_status() {
  local data="" pid port
  while [[ $# -gt 0 ]]; do
    case $1 in
      --data) data=${2:-}; shift 2 || die_usage "--data needs a value" ;;
      *) die_usage "status: unknown argument '$1'" ;;
    esac
  done
  [[ -n $data ]] || die_usage "status needs --data"
  pid=$(read_pid "$data/kafka.pid")
  port=$(prop "$data/server.properties" listeners | sed -n 's/^PLAINTEXT:\/\/[^,]*:\([0-9]*\).*/\1/p')
  if [[ -n $pid ]] && is_broker_pid "$pid"; then
    echo "running pid=$pid port=${port:-?} bootstrap=127.0.0.1:${port:-?}"
    return 0
  fi
  echo "stopped${port:+ port=$port}"
  return 3
}

# ------------------------------------------------------------------------------------- main

[[ $# -gt 0 ]] || { usage >&2; exit 2; }
command=$1
shift
case $command in
  fetch) cmd_fetch "$@" ;;
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  status) cmd_status "$@" ;;
  help | -h | --help) usage ;;
  *) die_usage "unknown command '$command'" ;;
esac
