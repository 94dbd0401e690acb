#!/usr/bin/env bash
# Where a server's CPU time goes under one scenario's load: runs the harness on one peer at a
# time and samples with `perf record` while the load runs: CPU 1 only when pinned (the
# server's CPU; the load generator has CPU 0), every CPU when unpinned. Writes, per peer, the
# harness's report and three `perf report` tables: time per process, thread and kernel/user
# side (threads.txt); the hottest symbols by their own samples (symbols.txt); and by the
# samples of everything they call (calls.txt: `__x64_sys_sendto` is the whole send path,
# flume's `SyncSignal::fire` the whole wake-up of a sleeping receiver).
#
#   bench/profile.sh S2 iotask-actor tokio-ct mio            # results in target/profile/
#   LAYOUT=unpinned bench/profile.sh S2 iotask-actor tokio-ct
#
# Needs perf (Debian: linux-perf) and permission to sample a CPU (root, or
# kernel.perf_event_paranoid <= 0). Build first: cargo build --release -p iotask-bench.
set -euo pipefail
cd "$(dirname "$0")/.."

scenario=${1:?usage: bench/profile.sh SCENARIO PEER...}
shift
[ $# -gt 0 ] || { echo "usage: bench/profile.sh SCENARIO PEER..." >&2; exit 2; }
bin=target/release/iotask-bench
out=${PROFILE_OUT:-target/profile}
seconds=${PROFILE_SECONDS:-3}
layout=${LAYOUT:-pinned}
case "$layout" in
    pinned) cpus=(-C 1) ;;
    unpinned) cpus=(-a) ;;
    *) echo "profile.sh: LAYOUT is pinned or unpinned, not $layout" >&2; exit 2 ;;
esac
mkdir -p "$out"
command -v perf >/dev/null || { echo "profile.sh: perf is not installed" >&2; exit 1; }
[ -x "$bin" ] || { echo "profile.sh: build $bin first" >&2; exit 1; }

for peer in "$@"; do
    name="$out/$scenario-$layout-$peer"
    # The harness measures for seconds + 4; sampling starts 2 s in (server started, warm-up
    # over) and stops before the measurement does.
    "$bin" --scenarios "$scenario" --peers "$peer" --layout "$layout" --rounds 1 \
        --duration $((seconds + 4)) --no-syscalls --out-md "$name.md" --out-svg /dev/null \
        >"$name.log" 2>&1 &
    harness=$!
    sleep 2
    perf record -q "${cpus[@]}" -F 4000 -g -o "$name.data" -- sleep "$seconds" 2>/dev/null
    wait "$harness"
    report=(perf report -i "$name.data" --stdio -g none)
    "${report[@]}" --no-children --sort pid,comm,dso >"$name.threads.txt" 2>/dev/null
    "${report[@]}" --no-children --sort pid,comm,sym --percent-limit 0.7 \
        >"$name.symbols.txt" 2>/dev/null
    "${report[@]}" --children --sort pid,comm,sym --percent-limit 1 >"$name.calls.txt" 2>/dev/null
    echo "$peer: $(grep -m1 -E 'msg/s|conn/s|MB/s|µs' "$name.log" || true)"
done
echo "reports in $out/"
