#!/usr/bin/env bash
# Joining a node to a large state, under load, on this machine:
#   1. a fresh 3-node `keyraft dev` cluster takes audited Encrypts (64 B) from
#      --concurrency callers for --grow, which fills its state with audit events;
#   2. a fourth node is started, and `keyraft cluster add-node` runs while the same load
#      goes on for --during.
# Reports whether and how fast the add succeeded, how often the state was sent, how long
# the new node took to receive and to install it, the peak memory of the new node and of
# the leader while it joined, the new node's peak disk use (its data directory and any
# deleted file it still holds open), and the calls' rate and slowest call meanwhile.
#
# Prints a summary and writes it as JSON. See BENCHMARKS.md, "Joining a node to a large
# state".
#
# Usage: bench/join-large-state.sh [--grow 90s] [--during 60s] [--concurrency 64]
#                                  [--out join-results.json] [--no-build] [--keep]
# --keep leaves the cluster's directory (node logs, per-second CSV) behind for a look.
set -euo pipefail
cd "$(dirname "$0")/.."

GROW=90s
DURING=60s
CONCURRENCY=64
OUT=join-results.json
BUILD=1
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --grow) GROW=$2; shift 2 ;;
    --during) DURING=$2; shift 2 ;;
    --concurrency) CONCURRENCY=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

say() { echo "== $*" >&2; }

if [ "$BUILD" = 1 ]; then
  say "cargo build --release -p keyraft-cli"
  cargo build --release -p keyraft-cli
fi
KEYRAFT=$PWD/target/release/keyraft
[ -x "$KEYRAFT" ] || { echo "no $KEYRAFT: build it first" >&2; exit 1; }

WORK=$(mktemp -d)
DEV_PID=""
NODE4_PID=""
cleanup() {
  [ -n "$NODE4_PID" ] && kill "$NODE4_PID" 2>/dev/null || true
  # `keyraft dev` stops its nodes when it is stopped.
  [ -n "$DEV_PID" ] && kill "$DEV_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  if [ "$KEEP" = 1 ]; then
    echo "== kept $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# Peak resident memory of $1 so far, in MiB.
peak_mib() { awk '/VmHWM/ { print int($2 / 1024) }' "/proc/$1/status"; }

say "starting a 3-node cluster in $WORK"
"$KEYRAFT" dev --nodes 3 --base-port 0 --data-dir "$WORK/d" --region bench-1 >"$WORK/dev.json" 2>"$WORK/dev.err" &
DEV_PID=$!
for _ in $(seq 1 300); do
  [ -s "$WORK/dev.json" ] && break
  kill -0 "$DEV_PID" 2>/dev/null || { cat "$WORK/dev.err" >&2; exit 1; }
  sleep 0.1
done
set -a
# shellcheck disable=SC1091
. "$WORK/d/cluster.env"
set +a

say "growing the state: audited Encrypt, $CONCURRENCY callers, $GROW"
"$KEYRAFT" bench --workload encrypt --concurrency "$CONCURRENCY" --duration "$GROW" --warmup 1s \
  --json >"$WORK/grow.json"
STATE_MIB=$(du -sm "$WORK/d/node1/store" | cut -f1)
LEADER_ID=$("$KEYRAFT" cluster status 2>/dev/null | python3 -c 'import json, sys; print(json.load(sys.stdin)["Leader"])' || echo 1)
LEADER_PID=$(python3 -c 'import json, sys; print(next(n["Pid"] for n in json.load(open(sys.argv[1]))["Nodes"] if n["Id"] == int(sys.argv[2])))' "$WORK/dev.json" "$LEADER_ID")

API=$(free_port)
RAFT=$(free_port)
sed -e 's/^node_id = .*/node_id = 4/' \
  -e "s#^data_dir = .*#data_dir = \"$WORK/d/node4\"#" \
  -e "s/^api_addr = .*/api_addr = \"127.0.0.1:$API\"/" \
  -e "s/^raft_addr = .*/raft_addr = \"127.0.0.1:$RAFT\"/" \
  "$WORK/d/node3.toml" >"$WORK/d/node4.toml"
say "starting node 4 and adding it under load ($DURING)"
"$KEYRAFT" server --config "$WORK/d/node4.toml" >"$WORK/node4.log" 2>&1 &
NODE4_PID=$!
"$KEYRAFT" bench --workload encrypt --concurrency "$CONCURRENCY" --duration "$DURING" --warmup 1s \
  --json --csv "$WORK/during.csv" >"$WORK/during.json" &
BENCH_PID=$!
sleep 3
# The leader's resident memory while the node joins (its peak so far includes the growth).
( while kill -0 "$BENCH_PID" 2>/dev/null; do
    awk '/VmRSS/ { print int($2 / 1024) }' "/proc/$LEADER_PID/status" 2>/dev/null || true
    sleep 0.5
  done ) >"$WORK/leader-rss.txt" &
# The new node's disk use: its data directory, and files it holds open that have no name.
python3 - "$WORK/d/node4" "$NODE4_PID" "$BENCH_PID" >"$WORK/node4-disk.txt" <<'EOF' &
import os, sys, time
top, node, bench = sys.argv[1], sys.argv[2], int(sys.argv[3])


def used(path):
    try:
        return os.stat(path, follow_symlinks=False).st_blocks * 512
    except OSError:
        return 0


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


while alive(bench):
    total = sum(used(os.path.join(d, f)) for d, _, fs in os.walk(top) for f in fs)
    fds = f"/proc/{node}/fd"
    for fd in os.listdir(fds) if os.path.isdir(fds) else []:
        try:
            if os.readlink(os.path.join(fds, fd)).endswith("(deleted)"):
                total += os.stat(os.path.join(fds, fd)).st_blocks * 512
        except OSError:
            pass
    print(total >> 20, flush=True)
    time.sleep(0.5)
EOF
START=$(date +%s.%N)
ADD_OK=true
"$KEYRAFT" cluster add-node --node-id 4 --endpoint "http://127.0.0.1:$API" \
  --raft-addr "127.0.0.1:$RAFT" --timeout 180 >"$WORK/add.out" 2>&1 || ADD_OK=false
ADD_S=$(python3 -c "print(round($(date +%s.%N) - $START, 1))")
wait "$BENCH_PID"
NODE4_PEAK=$(peak_mib "$NODE4_PID")

python3 - "$WORK" "$OUT" "$ADD_OK" "$ADD_S" "$STATE_MIB" "$NODE4_PEAK" "$LEADER_ID" <<'EOF'
import json, re, sys
from datetime import datetime

work, out, add_ok, add_s, state_mib, node4_peak, leader = sys.argv[1:8]
during = json.load(open(f"{work}/during.json"))["operations"]["Encrypt"]
rates = [int(l.split(",")[1]) for l in open(f"{work}/during.csv").read().split("\n")[1:] if l]
# The last second of the CSV is the partial one the run ended in.
rates = rates[:-1] if len(rates) > 1 else rates
before = rates[:3]
leader_rss = [int(l) for l in open(f"{work}/leader-rss.txt") if l.strip()]
node4_disk = [int(l) for l in open(f"{work}/node4-disk.txt") if l.strip()]


def stamp(line):
    match = re.search(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z", line)
    return datetime.fromisoformat(match.group(1)) if match else None


strip = re.compile(r"\x1b\[[0-9;]*m")
node4 = [strip.sub("", l) for l in open(f"{work}/node4.log", errors="replace")]
starts = [stamp(l) for l in node4 if "worker_loop: install complete snapshot" in l]
dones = [stamp(l) for l in node4 if "Done install complete snapshot" in l]
installs = [round((d - s).total_seconds(), 1) for s, d in zip(starts, dones) if s and d]
receiving = [stamp(l) for l in node4 if "receiving a snapshot" in l]
transfers = [round((d - s).total_seconds(), 1) for s, d in zip(receiving, dones) if s and d]
leader_log = f"{work}/d/node{leader}.log"
sends = sum("finished sending full_snapshot" in l for l in open(leader_log, errors="replace"))
report = {
    "add_node_ok": add_ok == "true",
    "add_node_s": float(add_s),
    "state_mib_per_node": int(state_mib),
    "snapshot_installs": len(starts),
    "snapshots_sent": sends,
    "receive_and_install_s": transfers,
    "install_s": installs,
    "new_node_peak_mib": int(node4_peak),
    "new_node_disk_peak_mib": max(node4_disk, default=0),
    "leader_peak_mib_while_joining": max(leader_rss, default=0),
    "ops_per_s_during": round(during["ops_per_s"]),
    "ops_per_s_first_3s": round(sum(before) / max(len(before), 1)),
    "slowest_second_ops": min(rates, default=0),
    "p99_ms": during["p99_ms"],
    "p999_ms": during["p999_ms"],
    "max_ms": during["max_ms"],
    "errors": during["errors"],
}
json.dump(report, open(out, "w"), indent=2)
for key, value in report.items():
    print(f"{key:32} {value}")
EOF
[ "$ADD_OK" = true ] || { say "add-node failed:"; cat "$WORK/add.out" >&2; exit 1; }
