#!/usr/bin/env bash
# The same scenarios, in the same run, against two versions of the library: the library is
# compiled into the bench binary, so this builds the bench twice (OLD_REV in a temporary git
# worktree with a target directory of its own; the current tree, uncommitted changes
# included, as usual), then runs the two binaries alternately, round by round (old, new;
# new, old; ...), one harness round each time, and prints per scenario and layout each
# peer's median figures under each binary and the new/old ratio. tokio-ct is always among
# the peers: its server is the same code in both binaries, so its new/old ratio is the
# noise check, and each binary's ratio to it is the figure the harness reports.
#
#   bench/compare.sh 50f1db0                                     # S2,S5; iotask-actor, tokio-ct
#   LAYOUT=pinned bench/compare.sh 50f1db0 S2,S5 iotask-actor,iotask-actor-listen
#   ROUNDS=1 DURATION=0.5 bench/compare.sh 50f1db0               # a smoke run
#
# Environment: ROUNDS (3), LAYOUT (pinned|unpinned|both; both), DURATION (seconds measured
# per scenario and peer; the harness's 2 s when unset), COMPARE_OUT (target/compare),
# SYSCALLS=1 to count system calls and context switches too (slower), and OLD_BIN/NEW_BIN to
# compare two bench binaries already built instead of two revisions (OLD_REV then only names
# the old one), for example the epoll and the `polling` backend of one tree:
#
#   RUSTFLAGS="--cfg iotask_force_polling" CARGO_TARGET_DIR=target/polling \
#       cargo build --release -p iotask-bench
#   OLD_BIN=target/release/iotask-bench NEW_BIN=target/polling/release/iotask-bench \
#       SYSCALLS=1 bench/compare.sh epoll S1,S2
# Scenarios must be known to both binaries (50f1db0's bench knows S1 … S7, not S2U).
# Every harness report, log and the tables go to COMPARE_OUT/run-DATE/.
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: bench/compare.sh OLD_REV [SCENARIOS (S2,S5)] [PEERS (iotask-actor,tokio-ct)]"
old_rev=${1:?$usage}
scenarios=${2:-S2,S5}
peers=${3:-iotask-actor,tokio-ct}
rounds=${ROUNDS:-3}
layout=${LAYOUT:-both}
duration=${DURATION:-}
out=${COMPARE_OUT:-target/compare}
case ",$peers," in *,tokio-ct,*) ;; *) peers="$peers,tokio-ct" ;; esac
case "$layout" in pinned | unpinned | both) ;; *)
    echo "compare.sh: LAYOUT is pinned, unpinned or both, not $layout" >&2
    exit 2
    ;;
esac

if [ -n "${OLD_BIN:-}" ]; then
    old_sha=$old_rev
    old_name=$old_rev
    new_name=$(basename "$(dirname "$(dirname "${NEW_BIN:?NEW_BIN goes with OLD_BIN}")")")
else
    old_sha=$(git rev-parse --verify --quiet "$old_rev^{commit}") ||
        { echo "compare.sh: $old_rev is not a commit" >&2; exit 2; }
    old_name=$(git rev-parse --short "$old_sha")
    new_name=$(git describe --always --dirty)
fi
run_dir="$out/run-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$run_dir"
out=$(cd "$out" && pwd)
run_dir=$(cd "$run_dir" && pwd)

tree=$(mktemp -d "${TMPDIR:-/tmp}/iotask-compare.XXXXXX")
cleanup() {
    git worktree remove --force "$tree/src" >/dev/null 2>&1 || true
    rm -rf "$tree"
}
trap cleanup EXIT

if [ -n "${OLD_BIN:-}" ]; then
    cp "$OLD_BIN" "$run_dir/bench-old"
    cp "$NEW_BIN" "$run_dir/bench-new"
else
    echo "compare.sh: building the bench at $old_name (old) in a temporary worktree" >&2
    git worktree add --quiet --detach "$tree/src" "$old_sha"
    (cd "$tree/src" && CARGO_TARGET_DIR="$out/target-old" cargo build --release --locked -p iotask-bench)
    cp "$out/target-old/release/iotask-bench" "$run_dir/bench-old"
    echo "compare.sh: building the bench of the current tree, $new_name (new)" >&2
    cargo build --release -p iotask-bench
    # Copies, so that a build during the run does not change what is measured.
    cp target/release/iotask-bench "$run_dir/bench-new"
fi

args=(--scenarios "$scenarios" --peers "$peers" --layout "$layout" --rounds 1
    --out-svg /dev/null)
[ "${SYSCALLS:-}" = 1 ] || args+=(--no-syscalls)
[ -n "$duration" ] && args+=(--duration "$duration")
{
    echo "old: $old_sha ($old_rev)"
    echo "new: $new_name (working tree of $(git rev-parse HEAD))"
    echo "harness arguments per run: ${args[*]}"
    echo "rounds: $rounds; load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$run_dir/about.txt"

for round in $(seq 1 "$rounds"); do
    # Old first in odd rounds, new first in even ones, so that drift in the machine's load
    # weighs on both alike.
    order=(old new)
    [ $((round % 2)) -eq 0 ] && order=(new old)
    for which in "${order[@]}"; do
        echo "compare.sh: round $round/$rounds, $which" >&2
        if ! "$run_dir/bench-$which" "${args[@]}" --out-md "$run_dir/$which-$round.md" \
            >/dev/null 2>"$run_dir/$which-$round.log"; then
            tail -n 5 "$run_dir/$which-$round.log" >&2
            echo "compare.sh: the $which bench failed (log: $run_dir/$which-$round.log);" \
                "scenarios must be known to both binaries" >&2
            exit 1
        fi
        grep -E '^\[' "$run_dir/$which-$round.log" | sed 's/^/  /' >&2 || true
    done
done

# Every figure of every detail table ("### S2: …" then "| peer | layout | msg/s | …"), one
# line each: binary, scenario, layout, peer, column, value.
for f in "$run_dir"/old-*.md "$run_dir"/new-*.md; do
    which=$(basename "$f" | cut -d- -f1)
    awk -v which="$which" -F'|' '
        /^### / {
            scenario = ""
            if ($0 ~ /^### (S[0-9]+[UP]?|U[0-9]+(x[0-9]+)?): / && $0 !~ /system calls/) {
                scenario = substr($0, 5, index($0, ":") - 5)
            }
            ncols = 0
            next
        }
        scenario != "" && /^\| peer \| layout \|/ {
            ncols = NF
            for (i = 2; i < NF; i++) { name[i] = $i; gsub(/^ +| +$/, "", name[i]) }
            next
        }
        scenario != "" && ncols && /^\|[^-]/ {
            peer = $2; lay = $3
            gsub(/ /, "", peer); gsub(/ /, "", lay)
            for (i = 4; i < ncols; i++) {
                v = $i; gsub(/[ ,]/, "", v)
                if (v ~ /^-?[0-9.]+$/) print which "\t" scenario "\t" lay "\t" peer "\t" name[i] "\t" v
            }
        }
    ' "$f"
done >"$run_dir/figures.tsv"

# Medians per binary, scenario, layout, peer and column; then the tables.
awk -F'\t' -v old="$old_name" -v new="$new_name" -v rounds="$rounds" -v peers="$peers" \
    -v scenarios="$scenarios" -v layouts="$layout" '
    function median(list,    a, n, i, j, t) {
        n = split(list, a, " ")
        for (i = 2; i <= n; i++) {
            t = a[i] + 0
            for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]
            a[j + 1] = t
        }
        if (n == 0) return ""
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function fmt(v,    s, out, neg) {
        if (v == "") return "–"
        if (v >= 1000 || v <= -1000) {
            neg = v < 0; s = sprintf("%.0f", neg ? -v : v); out = ""
            while (length(s) > 3) { out = "," substr(s, length(s) - 2) out; s = substr(s, 1, length(s) - 3) }
            return (neg ? "-" : "") s out
        }
        if (v >= 100) return sprintf("%.0f", v)
        if (v >= 10) return sprintf("%.1f", v)
        if (v >= 1) return sprintf("%.2f", v)
        return sprintf("%.3f", v)
    }
    function ratio(a, b) { return (a == "" || b == "" || b == 0) ? "–" : sprintf("%.2f×", a / b) }
    function pair(a, b) { return fmt(a) " → " fmt(b) }
    function headline(s) {
        if (s == "S1") return "p50 µs"
        if (s == "S3" || s == "S4") return "MB/s"
        if (s == "S5") return "conn/s"
        if (s == "S6") return "KiB/conn"
        if (s ~ /^U/) return "datagrams/s"
        return "msg/s"
    }
    function get(which, s, l, p, col,    k) {
        k = which SUBSEP s SUBSEP l SUBSEP p SUBSEP col
        if (!(k in med)) med[k] = (k in vals) ? median(vals[k]) : ""
        return med[k]
    }
    {
        k = $1 SUBSEP $2 SUBSEP $3 SUBSEP $4 SUBSEP $5
        vals[k] = (k in vals) ? vals[k] " " $6 : $6
    }
    END {
        ns = split(scenarios, sc, ",")
        np = split(peers, pe, ",")
        nl = split(layouts == "both" ? "pinned,unpinned" : layouts, la, ",")
        printf "Old: %s. New: %s. %d round%s, binaries alternating (old, new; new, old; …), " \
            "medians shown; every figure from one run of both.\n\n", old, new, rounds, rounds == 1 ? "" : "s"
        for (i = 1; i <= ns; i++) {
            s = sc[i]; h = headline(s)
            per = (s == "S5") ? "conn" : (s ~ /^U/) ? "datagram" : "op"
            better = (s == "S1" || s == "S6") ? "lower" : "higher"
            for (j = 1; j <= nl; j++) {
                l = la[j]
                printf "### %s, %s: %s (%s is better)\n\n", s, l, h, better
                printf "| peer | old %s | new %s | new/old | old ÷ tokio-ct | new ÷ tokio-ct | CPU µs/%s old → new | ctx sw/%s old → new |\n", old, new, per, per
                print "|---|---:|---:|---:|---:|---:|---:|---:|"
                ro = get("old", s, l, "tokio-ct", h); rn = get("new", s, l, "tokio-ct", h)
                for (k = 1; k <= np; k++) {
                    p = pe[k]
                    o = get("old", s, l, p, h); n = get("new", s, l, p, h)
                    printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", p, fmt(o), fmt(n), ratio(n, o),
                        p == "tokio-ct" ? "ref" : ratio(o, ro), p == "tokio-ct" ? "ref" : ratio(n, rn),
                        pair(get("old", s, l, p, "CPU µs/" per), get("new", s, l, p, "CPU µs/" per)),
                        pair(get("old", s, l, p, "ctx sw/" per), get("new", s, l, p, "ctx sw/" per))
                }
                printf "\nNoise check: tokio-ct, the same server in both binaries, new/old %s.\n\n", ratio(rn, ro)
            }
        }
    }
' "$run_dir/figures.tsv" | tee "$run_dir/compare.md"
echo "compare.sh: reports, logs and tables in $run_dir" >&2
