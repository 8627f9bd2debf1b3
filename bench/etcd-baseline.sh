#!/usr/bin/env bash
# Keyraft next to its baselines, on this machine, in one run:
#   - the bare RPC bound: a no-op tonic unary call (`keyraft bench --workload noop-rpc`);
#   - etcd (Debian's etcd-server, 3 members on 127.0.0.1): puts of 200-byte values;
#   - Keyraft (3 nodes from `keyraft dev`): CreateKey (a Raft write) and Encrypt of
#     64 bytes (a local HSM call plus its audit record, which is committed through Raft);
# each at 1, 64 and 256 concurrent callers; then the failover time of both (kill -9 of
# the leader under write load; time until the next write succeeds).
#
# The three are measured in rounds (`--rounds`, 3 by default): each round runs all of
# them, on fresh clusters, a minute or two apart. This machine's speed drifts by tens of
# percent within minutes, so a ratio is taken within each round and the table gives the
# median of the rounds (and, for the ratios, their range).
#
# Prints one table and writes every report to a JSON file. See BENCHMARKS.md.
#
# Usage: bench/etcd-baseline.sh [--duration 10s] [--warmup 2s] [--concurrency "1 64 256"]
#                               [--rounds 3] [--runs 5] [--out bench-results.json] [--no-build]
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=10s
WARMUP=2s
CONCURRENCY="1 64 256"
ROUNDS=3
RUNS=5
OUT=bench-results.json
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --concurrency) CONCURRENCY=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "--rounds takes a positive number" >&2; exit 2; }

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

# run NAME CONCURRENCY ARGS...: one `keyraft bench` run of round $ROUND, its JSON report
# kept as NAME-CONCURRENCY.rROUND.json.
run() {
  local name=$1 c=$2
  shift 2
  say "round $ROUND/$ROUNDS: $name, $c callers"
  "$KEYRAFT" bench "$@" --concurrency "$c" --duration "$DURATION" --warmup "$WARMUP" --json \
    > "$RES/$name-$c.r$ROUND.json"
}

# --- 1. the bare RPC bound (nothing else running) -----------------------------------
bare_rpc() {
  for c in $CONCURRENCY; do
    run noop-rpc "$c" --workload noop-rpc
  done
}

# --- 2. etcd ------------------------------------------------------------------------
etcd_puts() {
  say "round $ROUND/$ROUNDS: starting a 3-member etcd cluster"
  local names=(e1 e2 e3) cports=() pports=() initial="" i
  for i in 0 1 2; do
    cports+=("$(free_port)")
    pports+=("$(free_port)")
  done
  for i in 0 1 2; do
    initial+="${initial:+,}${names[$i]}=http://127.0.0.1:${pports[$i]}"
  done
  rm -rf "$WORK/etcd"
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
  local eps=""
  for i in 0 1 2; do eps+="${eps:+,}http://127.0.0.1:${cports[$i]}"; done
  for _ in $(seq 100); do
    "$ETCDCTL" --endpoints "$eps" endpoint health >/dev/null 2>&1 && break
    sleep 0.2
  done
  # `endpoint status -w simple`: endpoint, id, version, db size, is leader, ...
  local leader
  leader=$("$ETCDCTL" --endpoints "$eps" endpoint status -w simple \
    | awk -F', ' '$5 == "true" { print $1 }')
  [ -n "$leader" ] || { echo "etcd has no leader" >&2; exit 1; }
  say "etcd leader: $leader"
  # Puts go to the leader, as Keyraft's client sends CreateKey to the leader.
  for c in $CONCURRENCY; do
    run etcd-put "$c" --workload etcd-put --etcd-endpoints "$leader" --payload-bytes 200 \
      --cpu-pids "$(IFS=,; echo "${ETCD_PIDS[*]}")"
  done
  for p in "${ETCD_PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait "${ETCD_PIDS[@]}" 2>/dev/null || true
  ETCD_PIDS=()
}

# --- 3. Keyraft ---------------------------------------------------------------------
keyraft_calls() {
  say "round $ROUND/$ROUNDS: starting a 3-node Keyraft cluster (keyraft dev)"
  rm -rf "$WORK/keyraft"
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
  local pids
  pids=$(IFS=,; echo "${NODE_PIDS[*]}")
  for c in $CONCURRENCY; do
    run create-key "$c" --workload create-key --cpu-pids "$pids"
    run encrypt "$c" --workload encrypt --payload-bytes 64 --cpu-pids "$pids"
  done
  kill -INT "$DEV_PID" 2>/dev/null || true
  wait "$DEV_PID" 2>/dev/null || true
  DEV_PID=""
  NODE_PIDS=()
  rm -f "$WORK/dev.json"
}

for ROUND in $(seq "$ROUNDS"); do
  bare_rpc
  etcd_puts
  keyraft_calls
done

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

# Every run's report, grouped: {"NAME-CONCURRENCY": [round 1's report, round 2's, ...]}.
for f in "$RES"/*.r*.json; do
  base=$(basename "$f" .json)
  jq -c --arg name "${base%.r*}" --argjson round "${base##*.r}" \
    '{name: $name, round: $round, report: .}' "$f"
done | jq -s 'group_by(.name) | map({(.[0].name): (sort_by(.round) | map(.report))}) | add' \
  > "$WORK/runs.json"

# One row per workload and concurrency: the median over the rounds of ops/s, p50, p99
# and CPU time per call (the three servers', the bench's), the errors of all rounds, and
# the ratios within each round (median, min, max): ops/s to etcd's puts and to the bare
# call, p50 to etcd's put p50 (below 1 is faster).
jq --arg conc "$CONCURRENCY" '
  def median: sort | if length % 2 == 1 then .[length / 2 | floor]
                     else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def op: .operations | to_entries[0].value;
  def ratio: map(select(.[1] > 0) | .[0] / .[1])
    | if length == 0 then null else {median: median, min: min, max: max} end;
  . as $runs
  | [($conc | split(" ") | map(select(length > 0)))[] as $c
     | ("noop-rpc", "etcd-put", "create-key", "encrypt") as $w
     | $runs["\($w)-\($c)"] as $rs
     | ($rs | map(op.ops_per_s)) as $ops
     | ($rs | map(op.p50_ms)) as $p50s
     | {workload: $w, callers: ($c | tonumber), rounds: ($rs | length),
        ops_per_s: ($ops | median),
        p50_ms: ($p50s | median),
        servers_cpu_us_per_call: ($rs | map(.cpu.processes_us_per_call // empty)
                                   | if length > 0 then median else null end),
        bench_cpu_us_per_call: ($rs | map(.cpu.bench_us_per_call // empty)
                                 | if length > 0 then median else null end),
        p99_ms: ($rs | map(op.p99_ms) | median),
        errors: ($rs | map([.operations[].errors[]] | add // 0) | add),
        vs_etcd: ([$ops, ($runs["etcd-put-\($c)"] | map(op.ops_per_s))] | transpose | ratio),
        vs_rpc: ([$ops, ($runs["noop-rpc-\($c)"] | map(op.ops_per_s))] | transpose | ratio),
        p50_vs_etcd: ([$p50s, ($runs["etcd-put-\($c)"] | map(op.p50_ms))] | transpose | ratio)}]
' "$WORK/runs.json" > "$WORK/summary.json"

{
  echo
  echo "machine: $(echo "$machine" | jq -r '"\(.nproc) cores (\(.cpu)), \(.memory), kernel \(.kernel), etcd \(.etcd)"')"
  echo "each run: $WARMUP warm-up, then $DURATION; closed-loop callers on min(callers, 8) connections"
  echo "$ROUNDS round(s); medians over the rounds; a ratio is taken within each round (range in brackets)"
  echo
  row='%-31s %7s %8s %7s %7s %6s %8s %8s  %-19s %-19s %s\n'
  # shellcheck disable=SC2059
  printf "$row" workload callers ops/s "p50 ms" "p99 ms" errors "srv µs" "bench µs" \
    "ops/s vs etcd" "ops/s vs RPC" "p50 vs etcd"
  jq -r '
    def r: . * 100 | round / 100;
    def title: {"noop-rpc": "bare tonic unary (no work)", "etcd-put": "etcd put, 200 B",
                "create-key": "keyraft CreateKey",
                "encrypt": "keyraft Encrypt 64 B (audited)"}[.];
    def ratio: if . == null then "-" elif .min == .max then "\(.median | r)x"
               else "\(.median | r)x [\(.min | r)-\(.max | r)]" end;
    .[] | [(.workload | title), .callers, (.ops_per_s | round), (.p50_ms | r), (.p99_ms | r),
           .errors, (.servers_cpu_us_per_call // "-" | if type == "number" then round else . end),
           (.bench_cpu_us_per_call // "-" | if type == "number" then round else . end),
           (.vs_etcd | ratio), (.vs_rpc | ratio), (.p50_vs_etcd | ratio)] | @tsv' \
    "$WORK/summary.json" \
    | while IFS=$'\t' read -r label c ops p50 p99 errs srv bench vetcd vrpc petcd; do
        # shellcheck disable=SC2059
        printf "$row" "$label" "$c" "$ops" "$p50" "$p99" "$errs" "$srv" "$bench" "$vetcd" "$vrpc" "$petcd"
      done
  echo "srv µs, bench µs: CPU time per call of the three servers together and of the bench"
  echo "process (its callers; for the bare call, the in-process server as well)"
  echo
  for s in etcd keyraft; do
    jq -r '"failover \(.system): median \(.median_ms * 10 | round / 10) ms (min \(.min_ms * 10 | round / 10), max \(.max_ms * 10 | round / 10)) over \(.runs | length) kills: \([.runs[].failover_ms * 10 | round / 10] | map(tostring) | join(", ")) ms"' \
      "$RES/failover-$s.json"
  done
}

jq -n --argjson machine "$machine" --arg duration "$DURATION" --arg warmup "$WARMUP" \
  --argjson rounds "$ROUNDS" --slurpfile runs "$WORK/runs.json" \
  --slurpfile summary "$WORK/summary.json" \
  --slurpfile etcd "$RES/failover-etcd.json" --slurpfile keyraft "$RES/failover-keyraft.json" \
  '{machine: $machine, duration: $duration, warmup: $warmup, rounds: $rounds,
    summary: $summary[0], runs: $runs[0],
    failover: {etcd: $etcd[0], keyraft: $keyraft[0]}}' \
  > "$OUT"
say "wrote $OUT"
