#!/usr/bin/env bash
# Runs one load measurement against a fresh `klectr serve` on loopback with
# `klectr bench`:
#
#   test/load/measure.sh builtin               # built-in analyzer
#   test/load/measure.sh ai 0ms                # fake AI service answering at once
#   test/load/measure.sh ai 50ms -baseline     # ... after 50 ms; bare multipart sink first
#
# Each run builds into $OUT (default /tmp/klectr-load), starts klectr on a
# fresh DATA_DIR at 127.0.0.1 on a free port, connects USERS Socket.IO users,
# sends N uploads of one BYTES-byte PNG from C at once, waits for every
# event, prints the bench's figures and the server's peak RSS and CPU, then
# stops what it started. Extra arguments after the scenario go to
# `klectr bench` (-baseline, -duration 60s -n 0, -wait 5m, ...).
# Environment: N (1000), C (50), USERS (1000), BYTES (100000), OUT, SRC (head:
# build commit REV, default HEAD, from a `git archive` snapshot, so that other
# people's uncommitted edits do not change what is measured; tree: the
# working tree), and any klectr setting (WORKER_CONCURRENCY, ...), passed to
# the server.
set -euo pipefail

scenario=${1:?usage: measure.sh builtin|ai <delay> [klectr bench flags...]}
shift
delay=0ms
if [[ $scenario == ai ]]; then
	delay=${1:?usage: measure.sh ai <delay>}
	shift
fi
OUT=${OUT:-/tmp/klectr-load}
N=${N:-1000} C=${C:-50} USERS=${USERS:-1000} BYTES=${BYTES:-100000}

repo=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$OUT"
src=$repo
rev="working tree at $(git -C "$repo" rev-parse --short HEAD)"
if [[ ${SRC:-head} == head ]]; then
	rev=$(git -C "$repo" rev-parse --short "${REV:-HEAD}")
	src=$OUT/src-$rev
	if [[ ! -d $src ]]; then
		rm -rf "$src.tmp" && mkdir -p "$src.tmp" && git -C "$repo" archive "$rev" | tar -x -C "$src.tmp" && mv "$src.tmp" "$src"
	fi
fi
(cd "$src" && go build -o "$OUT/klectr" ./cmd/klectr && go build -o "$OUT/fakeai" ./test/load/fakeai)

run=$(mktemp -d "$OUT/run.XXXXXX")
pids=()
# The run dir stays for inspection (the database, logs, RSS samples); its
# images go unless KEEP_BLOBS=1: a 20 s run stores 2–3 GB of them.
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	[[ ${KEEP_BLOBS:-} == 1 ]] || rm -rf "$run/data/blobs"
}
trap cleanup EXIT

# waitfor FILE PATTERN: up to 30 s for a line matching PATTERN in FILE.
waitfor() {
	for _ in $(seq 300); do
		grep -q "$2" "$1" 2>/dev/null && return 0
		sleep 0.1
	done
	echo "timed out waiting for $2 in $1" >&2
	return 1
}

if [[ $scenario == ai ]]; then
	"$OUT/fakeai" -delay "$delay" >"$run/fakeai.out" 2>"$run/fakeai.err" &
	pids+=($!)
	waitfor "$run/fakeai.out" '^http://'
	export AI_SERVICE_URL=$(head -1 "$run/fakeai.out")
fi

# A bench user may send more than a phone: no per-user rate limit unless asked.
UPLOAD_RATE=${UPLOAD_RATE:-0} DATA_DIR="$run/data" ADDR=127.0.0.1:0 "$OUT/klectr" serve 2>"$run/server.log" &
server=$!
pids=("$server" "${pids[@]}") # stop klectr before the fake AI
waitfor "$run/server.log" '"msg":"worker started"'
addr=$(grep -o '"msg":"listening","addr":"[^"]*"' "$run/server.log" | sed 's/.*"addr":"\([^"]*\)"/\1/')

echo "scenario $scenario${AI_SERVICE_URL:+ (AI $delay)}  klectr $rev  run dir $run  load average $(cut -d' ' -f1-3 /proc/loadavg)"

# The server's RSS every RSS_EVERY seconds (default 2), "seconds kB" lines in
# $run/rss.txt, summarised after the run: is memory flat, or does it grow?
(
	t0=$(date +%s)
	while kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$server/status" 2>/dev/null) && [[ -n $kb ]]; do
		echo "$(($(date +%s) - t0)) $kb" >>"$run/rss.txt"
		sleep "${RSS_EVERY:-2}"
	done
) &
sampler=$!
pids+=("$sampler")
status=0
"$OUT/klectr" bench -url "http://$addr" -data-dir "$run/data" -users "$USERS" \
	-c "$C" -n "$N" -image-bytes "$BYTES" -pid "$server" "$@" || status=$?
echo "load average after $(cut -d' ' -f1-3 /proc/loadavg)"
kill "$sampler" 2>/dev/null || true
if [[ -s $run/rss.txt ]]; then
	# max, and the curve at about 12 evenly spaced samples (seconds:MiB).
	awk '{ t[NR] = $1; v[NR] = $2; if ($2 > m) m = $2 }
		END {
			printf "server RSS every %ss: %d samples, max %.1f MiB; curve:", "'"${RSS_EVERY:-2}"'", NR, m / 1024
			step = NR > 12 ? int(NR / 12) : 1
			for (i = 1; i <= NR; i += step) printf " %ds:%.0f", t[i], v[i] / 1024
			printf " %ds:%.0f MiB\n", t[NR], v[NR] / 1024
		}' "$run/rss.txt"
fi

# The database's own view, when the sqlite3 shell is installed.
# River completes jobs in batches after the handler returns: give the last
# ones up to 5 s, so that "running" below means a job that is really stuck.
if command -v sqlite3 >/dev/null; then
	for _ in $(seq 50); do
		[[ $(sqlite3 -readonly "$run/data/klectr.db" "SELECT count(*) FROM river_job WHERE state = 'running'") == 0 ]] && break
		sleep 0.1
	done
	echo "assets: $(sqlite3 -readonly "$run/data/klectr.db" 'SELECT status, count(*) FROM assets GROUP BY 1' | tr '\n' ' ')"
	echo "jobs:   $(sqlite3 -readonly "$run/data/klectr.db" 'SELECT state, count(*) FROM river_job GROUP BY 1' | tr '\n' ' ')"
fi
# Anything above INFO in the server log is worth reading.
grep -v '"level":"INFO"' "$run/server.log" | grep -v 'JWT_SECRET is not set' | head -20 || true
exit $status
