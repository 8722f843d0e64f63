#!/usr/bin/env bash
# Compares two builds of the bench, alternating their runs so that the machine's drift falls on
# both (docs/bench.md#comparing-two-builds).
#
#   scripts/ab.sh BENCH_A BENCH_B PAIRS OUTDIR [bench flags...]
#
# Both builds must have --baseline (the bench of 2026-12-07 on).
# Runs A, B, A, B, ... (PAIRS runs of each, then one more A), each run with --json into OUTDIR
# and with --baseline set to the run just before it. Every B run is thus compared with the A
# before it and with the A after it; the summary gives, for each row, every such change of B
# over A, their median, how many of them the bench called faster, slower or the same, and a
# verdict: faster or slower only when every comparison agrees.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: scripts/ab.sh BENCH_A BENCH_B PAIRS OUTDIR [bench flags...]" >&2
  exit 2
fi
a="$1" b="$2" pairs="$3" out="$4"
shift 4
for bin in "$a" "$b"; do
  [ -x "$bin" ] || { echo "ab: $bin is not an executable (build it, then copy it aside)" >&2; exit 2; }
done
case "$pairs" in
  '' | *[!0-9]*) echo "ab: PAIRS must be a positive integer, got '$pairs'" >&2; exit 2 ;;
esac
pairs=$((10#$pairs))  # base 10: 08 is eight
[ "$pairs" -ge 1 ] || { echo "ab: PAIRS must be at least 1" >&2; exit 2; }
mkdir -p "$out"

prev=""
run() { # run NAME BINARY [bench flags...]
  local name="$1" bin="$2" json="$out/$1.json"
  shift 2
  echo "ab: $name ($bin)" >&2
  "$bin" "$@" --json "$json" ${prev:+--baseline "$prev"} > "$out/$name.txt" 2> "$out/$name.err" \
    || { cat "$out/$name.err" >&2; echo "ab: $name failed" >&2; exit 1; }
  prev="$json"
}
for i in $(seq 1 "$pairs"); do
  run "a$i" "$a" "$@"
  run "b$i" "$b" "$@"
done
run "a$((pairs + 1))" "$a" "$@"

python3 - "$out" "$pairs" <<'PY' | tee "$out/summary.txt"
import json, statistics, sys
out, pairs = sys.argv[1], int(sys.argv[2])
changes, verdicts = {}, {}
def add(doc, invert):
    for r in doc["results"]:
        v = r.get("vs_baseline")
        if not v:
            continue
        c = v["change"]
        # A run of A against the B before it: B over A is the inverse.
        c = 1 / (1 + c) - 1 if invert else c
        verdict = {"faster": "slower", "slower": "faster"}.get(v["verdict"], v["verdict"]) if invert else v["verdict"]
        changes.setdefault(r["variant"], []).append(c)
        verdicts.setdefault(r["variant"], []).append(verdict)
for i in range(1, pairs + 1):
    add(json.load(open(f"{out}/b{i}.json")), invert=False)
    add(json.load(open(f"{out}/a{i + 1}.json")), invert=True)
print(f"B over A, {2 * pairs} comparisons per row (each B run against the A before and after it):")
print("verdict: faster or slower only when every comparison says so; otherwise unclear")
print(f"{'variant':24} {'median':>8}  {'verdict':8}  faster/slower/same  changes")
for name, cs in changes.items():
    vs = verdicts[name]
    counts = "/".join(str(vs.count(k)) for k in ("faster", "slower", "same"))
    each = " ".join(f"{c * 100:+.1f}%" for c in cs)
    overall = vs[0] if vs[0] != "same" and vs.count(vs[0]) == len(vs) else "unclear"
    print(f"{name:24} {statistics.median(cs) * 100:+7.1f}%  {overall:8}  {counts:>18}  {each}")
PY
