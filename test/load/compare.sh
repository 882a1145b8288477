#!/usr/bin/env bash
# Measures, alternately and with the same `klectr bench` command, the three
# stacks of issue 9's targets 3 and 5 on this machine:
#
#   node     the original plan's Node.js stack (test/load/nodestack): one
#            Express + Socket.IO process and one BullMQ worker process, on
#            FerretDB (PostgreSQL) + Redis
#   serve    embedded `klectr serve` (SQLite, blobs on disk)
#   cluster  2 `klectr api` + 2 `klectr worker` on the same FerretDB + Redis
#            and a shared blob directory (BLOB_URL=file:///…); the bench
#            spreads users' sockets and upload connections over both api
#            processes (-url a,b), so one user's uploads and socket meet
#            different processes
#
#   test/load/compare.sh                     # ROUNDS=2: node, serve, cluster, node, serve, cluster
#   ROUNDS=3 STACKS="node cluster" test/load/compare.sh
#
# Every run: USERS (1000) connected users, N (1000) uploads of one BYTES
# (100000) PNG, C (50) at once, the fake AI at AI_DELAY (50ms), WORKERS (50)
# AI slots in all (the cluster: WORKERS/2 per worker process). Each run gets
# fresh processes, a fresh database (MongoDB database and Redis logical DB of
# its own) and DATA_DIR. FerretDB, its PostgreSQL and Redis are started once
# for the script under $OUT/svc (scripts/services.sh) and stopped at the
# end, so their CPU can be attributed: for each run the script reads
# utime+stime from /proc/<pid>/stat of every process of the stack (the
# stack's own processes; for node and cluster also FerretDB, PostgreSQL's
# postmaster with its children and reaped children, and Redis) right before
# and right after the bench, which includes connecting the sockets and
# waiting for the last event. The fake AI is the AI service's stand-in and
# is counted for none. Output: each bench report in $OUT/<run>/bench.out,
# one summary line per run on stdout.
set -euo pipefail

ROUNDS=${ROUNDS:-2} STACKS=${STACKS:-node serve cluster}
N=${N:-1000} C=${C:-50} USERS=${USERS:-1000} BYTES=${BYTES:-100000}
AI_DELAY=${AI_DELAY:-50ms} WORKERS=${WORKERS:-50}
OUT=${OUT:-/tmp/klectr-compare}
SECRET=compare-secret-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')

repo=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$OUT/bin"
(cd "$repo" && go build -o "$OUT/bin/klectr" ./cmd/klectr && go build -o "$OUT/bin/fakeai" ./test/load/fakeai)
[[ -d $repo/test/load/nodestack/node_modules ]] || (cd "$repo/test/load/nodestack" && npm ci --no-audit --no-fund >&2)

svc=$OUT/svc
pids=() # processes of the current run, stopped after it
stop_run() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	pids=()
}
cleanup() {
	stop_run
	[[ -n ${fakeai:-} ]] && kill "$fakeai" 2>/dev/null || true
	KLECTR_SERVICES_DIR=$svc "$repo/scripts/services.sh" stop || true
}
trap cleanup EXIT

# waitfor FILE PATTERN: up to 60 s for a line matching PATTERN in FILE.
waitfor() {
	for _ in $(seq 600); do
		grep -q "$2" "$1" 2>/dev/null && return 0
		sleep 0.1
	done
	echo "timed out waiting for $2 in $1" >&2
	cat "$1" >&2
	return 1
}
klectr_addr() { grep -o '"msg":"listening","addr":"[^"]*"' "$1" | head -1 | sed 's/.*"addr":"\([^"]*\)"/\1/'; }

# ticks PID: utime+stime so far, plus cutime+cstime (reaped children) with -c.
ticks() {
	local f
	f=$(sed 's/.*) //' "/proc/$2/stat" 2>/dev/null) || { echo 0; return; }
	set -- "$1" $f
	if [[ $1 == -c ]]; then echo $((${13} + ${14} + ${15} + ${16})); else echo $((${13} + ${14})); fi
}
# cpu NAME=PID...: one "NAME ticks" line per process; pg means the
# postmaster with its reaped children and its live children (the backends).
cpu() {
	local kv name pid t c
	for kv in "$@"; do
		name=${kv%%=*} pid=${kv#*=}
		if [[ $name == postgres ]]; then
			t=$(ticks -c "$pid")
			for c in $(pgrep -P "$pid"); do t=$((t + $(ticks - "$c"))); done
		else
			t=$(ticks - "$pid")
		fi
		echo "$name $t"
	done
}
hwm() { awk '/^VmHWM/ {printf "%.0f", $2/1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }

echo "== services under $svc" >&2
KLECTR_SERVICES_DIR=$svc "$repo/scripts/services.sh" start >"$OUT/svc.env"
# shellcheck disable=SC1090,SC1091
source "$OUT/svc.env"
redis_base=${KLECTR_TEST_REDIS_URL%/*}
mongo_base=${KLECTR_TEST_MONGODB_URI%/}
db_pids=(ferretdb="$(cat "$svc/ferretdb/pid")" postgres="$(head -1 "$svc/pg/postmaster.pid")" redis="$(cat "$svc/redis/pid")")

"$OUT/bin/fakeai" -delay "$AI_DELAY" -lifetime 2h >"$OUT/fakeai.out" 2>"$OUT/fakeai.err" &
fakeai=$!
waitfor "$OUT/fakeai.out" '^http://'
ai=$(head -1 "$OUT/fakeai.out")

echo "compare: klectr $(git -C "$repo" rev-parse --short HEAD) (working tree), $ROUNDS rounds of: $STACKS; users $USERS, n $N, c $C, image $BYTES B, AI $AI_DELAY, $WORKERS AI slots"
run_no=0
for round in $(seq "$ROUNDS"); do
	for stack in $STACKS; do
		run_no=$((run_no + 1))
		run=$OUT/r$round-$stack
		rm -rf "$run" && mkdir -p "$run"
		procs=() urls=()
		case $stack in
		node)
			db=$((run_no % 4000 + 1))
			for role in api worker; do
				arg=; [[ $role == worker ]] && arg=worker
				(cd "$repo/test/load/nodestack" && exec env JWT_SECRET="$SECRET" MONGODB_URI="$mongo_base/nodestack-$run_no" \
					REDIS_URL="$redis_base/$db" AI_SERVICE_URL="$ai" ADDR=127.0.0.1:0 WORKER_CONCURRENCY="$WORKERS" \
					node server.js $arg >"$run/$role.out" 2>"$run/$role.err") &
				pids+=($!) procs+=(node-$role=$!)
			done
			waitfor "$run/api.out" '^listening http://'
			waitfor "$run/worker.out" '^worker started'
			urls=("$(sed -n 's/^listening //p' "$run/api.out")")
			procs+=("${db_pids[@]}")
			;;
		serve)
			JWT_SECRET=$SECRET AI_SERVICE_URL=$ai WORKER_CONCURRENCY=$WORKERS UPLOAD_RATE=0 DATA_DIR=$run/data \
				ADDR=127.0.0.1:0 "$OUT/bin/klectr" serve 2>"$run/serve.log" &
			pids+=($!) procs+=(klectr-serve=$!)
			waitfor "$run/serve.log" '"msg":"worker started"'
			urls=("http://$(klectr_addr "$run/serve.log")")
			;;
		cluster)
			db=$((run_no % 4000 + 1))
			for role in api api worker worker; do
				i=${#pids[@]}
				JWT_SECRET=$SECRET AI_SERVICE_URL=$ai WORKER_CONCURRENCY=$((WORKERS / 2)) UPLOAD_RATE=0 \
					MONGODB_URI="$mongo_base/klectr-$run_no" REDIS_URL="$redis_base/$db" BLOB_URL="file://$run/blobs" \
					DATA_DIR=$run/data$i ADDR=127.0.0.1:0 "$OUT/bin/klectr" "$role" 2>"$run/$role$i.log" &
				pids+=($!) procs+=(klectr-$role$i=$!)
				waitfor "$run/$role$i.log" '"msg":"listening"'
				[[ $role == worker ]] && waitfor "$run/$role$i.log" '"msg":"worker started"'
				[[ $role == api ]] && urls+=("http://$(klectr_addr "$run/$role$i.log")")
			done
			procs+=("${db_pids[@]}")
			;;
		*) echo "unknown stack $stack" >&2; exit 2 ;;
		esac

		before=$(cpu "${procs[@]}")
		status=0
		load=$(cut -d' ' -f1-3 /proc/loadavg)
		"$OUT/bin/klectr" bench -url "$(IFS=,; echo "${urls[*]}")" -jwt-secret "$SECRET" -users "$USERS" -c "$C" -n "$N" \
			-image-bytes "$BYTES" -pid "${pids[0]}" >"$run/bench.out" 2>&1 || status=$?
		after=$(cpu "${procs[@]}")
		rss=$(for kv in "${procs[@]}"; do printf '%s=%sMiB ' "${kv%%=*}" "$(hwm "${kv#*=}")"; done)
		stop_run

		b=$run/bench.out
		acc=$(sed -n 's/.*(202: \([0-9]*\),.*/\1/p' "$b" | tail -1)
		total=$(join <(echo "$before" | sort) <(echo "$after" | sort) | awk '{t += $3 - $2} END {print t}')
		per=$(join <(echo "$before" | sort) <(echo "$after" | sort) | awk '{printf "%s=%.2fs ", $1, ($3 - $2) / 100}')
		printf '%s round %d (load %s, bench exit %d): %s | submit %s | %s | e2e %s | lag %s | %s | CPU %.2fs all processes, %.2fs per 1,000 uploads [%s] | peak RSS %s\n' \
			"$stack" "$round" "$load" "$status" \
			"$(grep -o '[0-9.]* uploads/s acknowledged' "$b" | tail -1)" \
			"$(grep 'submit latency' "$b" | tail -1 | awk '{print $3, $4, $7, $8}')" \
			"$(grep -o 'jobs/s [0-9.]*' "$b" | tail -1)" \
			"$(grep 'end-to-end' "$b" | awk '{print $2, $3, $6, $7}')" \
			"$(grep 'event lag' "$b" | awk '{print $5, $6}')" \
			"$(grep -o 'events [0-9]*: missing [0-9]*  duplicate [0-9]* (repeats [0-9]*)  cross-user [0-9]*' "$b")" \
			"$(echo "$total / 100" | bc -l)" "$(echo "$total / 100 * 1000 / ${acc:-1}" | bc -l)" "$per" "$rss"
		# Log lines above INFO, once each with their count.
		cat "$run"/*.log "$run"/*.err 2>/dev/null | grep -v '"level":"INFO"' | grep -v '^$' |
			sed 's/"time":"[^"]*",//; s/^(node:[0-9]*) //' | sort | uniq -c | sort -rn | head -5 || true
	done
done
