#!/usr/bin/env bash
# Keyraft next to its baselines, on this machine, in one run:
#   - the bare RPC bound: a no-op tonic unary call (`keyraft bench --workload noop-rpc`);
#   - etcd (Debian's etcd-server, 3 members on 127.0.0.1): puts of 200-byte values;
#   - Keyraft (3 nodes from `keyraft dev`): CreateKey (a Raft write) and Encrypt of
#     64 bytes (a local HSM call plus its audit record, which is committed through Raft);
# each at 1, 64 and 256 concurrent callers; then the failover time of both (kill -9 of
# the leader under write load; time until the next write succeeds).
#
# Prints one table and writes every report to a JSON file. See BENCHMARKS.md.
#
# Usage: bench/etcd-baseline.sh [--duration 10s] [--warmup 2s] [--concurrency "1 64 256"]
#                               [--runs 5] [--out bench-results.json] [--no-build]
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=10s
WARMUP=2s
CONCURRENCY="1 64 256"
RUNS=5
OUT=bench-results.json
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --concurrency) CONCURRENCY=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

say() { echo "== $*" >&2; }

# --- tools -------------------------------------------------------------------------
need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v jq >/dev/null 2>&1 || need+=(jq)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # policy-rc.d may refuse to start the packaged etcd service; we run our own members.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
ETCD=$(command -v etcd)
ETCDCTL=$(command -v etcdctl)
export ETCDCTL_API=3

if [ "$BUILD" = 1 ]; then
  say "cargo build --release -p keyraft-cli"
  cargo build --release -p keyraft-cli
fi
KEYRAFT=$PWD/target/release/keyraft
[ -x "$KEYRAFT" ] || { echo "no $KEYRAFT: build it first" >&2; exit 1; }

# --- scratch space and cleanup -----------------------------------------------------
WORK=$(mktemp -d -t keyraft-baseline-XXXXXX)
RES=$WORK/results
mkdir -p "$RES"
ETCD_PIDS=()
DEV_PID=""
NODE_PIDS=()

cleanup() {
  set +e
  for p in "${ETCD_PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  if [ -n "$DEV_PID" ]; then
    kill -INT "$DEV_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$DEV_PID" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$DEV_PID" 2>/dev/null
  fi
  for p in "${NODE_PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port nothing listens on (random, then checked).
free_port() {
  local p
  while true; do
    p=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
}

# run NAME CONCURRENCY ARGS...: one `keyraft bench` run, its JSON report kept.
run() {
  local name=$1 c=$2
  shift 2
  say "$name, $c callers"
  "$KEYRAFT" bench "$@" --concurrency "$c" --duration "$DURATION" --warmup "$WARMUP" --json \
    > "$RES/$name-$c.json"
}

# --- 1. the bare RPC bound (nothing else running) -----------------------------------
for c in $CONCURRENCY; do
  run noop-rpc "$c" --workload noop-rpc
done

# --- 2. etcd ------------------------------------------------------------------------
say "starting a 3-member etcd cluster"
names=(e1 e2 e3)
cports=()
pports=()
for i in 0 1 2; do
  cports+=("$(free_port)")
  pports+=("$(free_port)")
done
initial=""
for i in 0 1 2; do
  initial+="${initial:+,}${names[$i]}=http://127.0.0.1:${pports[$i]}"
done
for i in 0 1 2; do
  "$ETCD" --name "${names[$i]}" --data-dir "$WORK/etcd/${names[$i]}" \
    --listen-client-urls "http://127.0.0.1:${cports[$i]}" \
    --advertise-client-urls "http://127.0.0.1:${cports[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${pports[$i]}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${pports[$i]}" \
    --initial-cluster "$initial" --initial-cluster-token keyraft-baseline \
    --initial-cluster-state new --logger zap \
    > "$WORK/etcd-${names[$i]}.log" 2>&1 &
  ETCD_PIDS+=($!)
done
ETCD_EPS=""
for i in 0 1 2; do ETCD_EPS+="${ETCD_EPS:+,}http://127.0.0.1:${cports[$i]}"; done
for _ in $(seq 100); do
  "$ETCDCTL" --endpoints "$ETCD_EPS" endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done
# `endpoint status -w simple`: endpoint, id, version, db size, is leader, ...
ETCD_LEADER=$("$ETCDCTL" --endpoints "$ETCD_EPS" endpoint status -w simple \
  | awk -F', ' '$5 == "true" { print $1 }')
[ -n "$ETCD_LEADER" ] || { echo "etcd has no leader" >&2; exit 1; }
say "etcd leader: $ETCD_LEADER"
# Puts go to the leader, as Keyraft's client sends CreateKey to the leader.
for c in $CONCURRENCY; do
  run etcd-put "$c" --workload etcd-put --etcd-endpoints "$ETCD_LEADER" --payload-bytes 200
done
for p in "${ETCD_PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
wait "${ETCD_PIDS[@]}" 2>/dev/null || true
ETCD_PIDS=()

# --- 3. Keyraft ---------------------------------------------------------------------
say "starting a 3-node Keyraft cluster (keyraft dev)"
"$KEYRAFT" dev --nodes 3 --base-port 0 --data-dir "$WORK/keyraft" --region bench-1 \
  > "$WORK/dev.json" 2> "$WORK/dev.log" &
DEV_PID=$!
for _ in $(seq 600); do
  [ -s "$WORK/dev.json" ] && break
  kill -0 "$DEV_PID" 2>/dev/null || { cat "$WORK/dev.log" >&2; exit 1; }
  sleep 0.1
done
[ -s "$WORK/dev.json" ] || { echo "keyraft dev did not become ready" >&2; exit 1; }
mapfile -t NODE_PIDS < <(jq -r '.Nodes[].Pid' "$WORK/dev.json")
set -a
# shellcheck disable=SC1091
. "$WORK/keyraft/cluster.env"
set +a
for c in $CONCURRENCY; do
  run create-key "$c" --workload create-key
  run encrypt "$c" --workload encrypt --payload-bytes 64
done
kill -INT "$DEV_PID" 2>/dev/null || true
wait "$DEV_PID" 2>/dev/null || true
DEV_PID=""
NODE_PIDS=()

# --- 4. failover --------------------------------------------------------------------
say "failover: etcd, $RUNS runs"
"$KEYRAFT" bench failover --system etcd --etcd-bin "$ETCD" --runs "$RUNS" --json \
  > "$RES/failover-etcd.json"
say "failover: keyraft, $RUNS runs"
"$KEYRAFT" bench failover --system keyraft --runs "$RUNS" --json > "$RES/failover-keyraft.json"

# --- report -------------------------------------------------------------------------
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
mem=$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
machine=$(jq -n --arg cpu "$cpu" --arg mem "$mem" --arg kernel "$(uname -r)" \
  --arg etcd "$("$ETCD" --version | awk '/etcd Version/ { print $3 }')" \
  --argjson nproc "$(nproc)" \
  '{cpu: $cpu, nproc: $nproc, memory: $mem, kernel: $kernel, etcd: $etcd}')

# ops/s, p50, p99 and errors of a run's only operation.
field() { jq -r ".operations | to_entries[0].value.$2" "$RES/$1.json"; }
errors() { jq -r '[.operations[].errors[]] | add // 0' "$RES/$1.json"; }

{
  echo
  echo "machine: $(echo "$machine" | jq -r '"\(.nproc) cores (\(.cpu)), \(.memory), kernel \(.kernel), etcd \(.etcd)"')"
  echo "each run: $WARMUP warm-up, then $DURATION; closed-loop callers on min(callers, 8) connections"
  echo
  printf '%-34s %7s %10s %9s %9s %7s %9s %9s\n' \
    workload callers ops/s "p50 ms" "p99 ms" errors "vs etcd" "vs RPC"
  for c in $CONCURRENCY; do
    etcd_ops=$(field "etcd-put-$c" ops_per_s)
    rpc_ops=$(field "noop-rpc-$c" ops_per_s)
    for row in "noop-rpc:bare tonic unary (no work)" "etcd-put:etcd put, 200 B" \
      "create-key:keyraft CreateKey" "encrypt:keyraft Encrypt 64 B (audited)"; do
      name=${row%%:*}
      label=${row#*:}
      ops=$(field "$name-$c" ops_per_s)
      printf '%-34s %7s %10.0f %9.2f %9.2f %7s %9s %9s\n' "$label" "$c" "$ops" \
        "$(field "$name-$c" p50_ms)" "$(field "$name-$c" p99_ms)" "$(errors "$name-$c")" \
        "$(awk -v a="$ops" -v b="$etcd_ops" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }')" \
        "$(awk -v a="$ops" -v b="$rpc_ops" 'BEGIN { if (b > 0) printf "%.3fx", a / b; else print "-" }')"
    done
    echo
  done
  for s in etcd keyraft; do
    jq -r '"failover \(.system): median \(.median_ms * 10 | round / 10) ms (min \(.min_ms * 10 | round / 10), max \(.max_ms * 10 | round / 10)) over \(.runs | length) kills: \([.runs[].failover_ms * 10 | round / 10] | map(tostring) | join(", ")) ms"' \
      "$RES/failover-$s.json"
  done
}

for f in "$RES"/*.json; do
  jq -c --arg name "$(basename "$f" .json)" '{name: $name, report: .}' "$f"
done | jq -s --argjson machine "$machine" --arg duration "$DURATION" --arg warmup "$WARMUP" \
  '{machine: $machine, duration: $duration, warmup: $warmup,
    runs: (map(select(.name | startswith("failover") | not)) | map({(.name): .report}) | add),
    failover: (map(select(.name | startswith("failover"))) | map({(.report.system): .report}) | add)}' \
  > "$OUT"
say "wrote $OUT"
