#!/usr/bin/env bash
# The CUDA rows of the bench on a machine with an NVIDIA GPU, from a bench binary built with the
# `cuda` feature (on this machine or on another one: the GPU machine needs the driver and NVRTC,
# not Rust):
#
#     cargo build --release --features cuda --example bench
#     scripts/cuda-bench.sh [BENCH [OUT]]
#
# BENCH defaults to target/release/examples/bench, OUT (created) to cuda-results. Writes:
#   OUT/card.txt           the date, the card, its driver, clocks and power limit (nvidia-smi,
#                          where there is one)
#   OUT/default.txt, .json the CUDA rows at the default shape, trained weights, with names
#   OUT/32x2.txt, .json    the same at embd=32,layers=2,mlp=128 (random weights)
#   OUT/soak.txt           with SOAK=SECONDS: the fastest CUDA row that long, spot-checked
# Fails when any CUDA row is skipped (no driver, device or NVRTC: the reason is in the output)
# or a check fails. When NVRTC is installed only under a name the bench does not try (CUDA 13's
# libnvrtc.so.13), it is linked as libnvrtc.so in a temporary folder put on LD_LIBRARY_PATH.
# CUDA_HOME: the CUDA toolkit's folder, where NVRTC is looked for (default /usr/local/cuda).
set -euo pipefail

bench=${1:-target/release/examples/bench}
out=${2:-cuda-results}
[[ -x $bench ]] || { echo "cuda-bench: no bench binary at $bench (cargo build --release --features cuda --example bench)" >&2; exit 2; }
mkdir -p "$out"

{
    date -u
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.memory,power.limit --format=csv ||
            echo "nvidia-smi failed (exit $?)"
    else
        echo "nvidia-smi not found (the bench prints the device CUDA reports)"
    fi
} | tee "$out/card.txt"

# NVRTC: the bench says whether it loads (--nvrtc-check). Where it does not, put the toolkit's
# folder (under CUDA_HOME, default /usr/local/cuda) on LD_LIBRARY_PATH if that makes it load, or
# else link the newest versioned copy there (CUDA 13's libnvrtc.so.13, a name the bench does not
# try) as libnvrtc.so in a temporary folder.
cuda=${CUDA_HOME:-/usr/local/cuda}
nvrtc_loads() { LD_LIBRARY_PATH="$1" "$bench" --nvrtc-check >/dev/null 2>&1; }
if ! nvrtc_loads "${LD_LIBRARY_PATH:-}"; then
    found=
    for d in "$cuda"/lib64 "$cuda"/targets/*/lib; do
        if [[ -z $found && -d $d ]] && nvrtc_loads "$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; then
            found=$d
        fi
    done
    if [[ -n $found ]]; then
        export LD_LIBRARY_PATH="$found${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        echo "cuda-bench: NVRTC from $found"
    else
        lib=$(ls -1 "$cuda"/lib64/libnvrtc.so.[0-9]* "$cuda"/targets/*/lib/libnvrtc.so.[0-9]* 2>/dev/null |
            sort -V | tail -n 1 || true)
        if [[ -n $lib ]]; then
            lib=$(readlink -f "$lib")
            link=$(mktemp -d)
            trap 'rm -rf "$link"' EXIT
            ln -s "$lib" "$link/libnvrtc.so"
            # Its own folder too: NVRTC loads its builtins library (libnvrtc-builtins) from there.
            export LD_LIBRARY_PATH="$link:$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            echo "cuda-bench: NVRTC from $lib (linked as $link/libnvrtc.so)"
        fi
    fi
    nvrtc_loads "${LD_LIBRARY_PATH:-}" || echo "cuda-bench: $("$bench" --nvrtc-check 2>&1 || true)"
fi

run() {
    local name=$1
    shift
    local rc=0
    "$bench" --variant cuda "$@" 2>&1 | tee "$out/$name.txt" || rc=$?
    if ((rc != 0)); then
        echo "cuda-bench: the bench failed ($name, exit $rc)" >&2
        exit 1
    fi
    if grep -q '^skipped cuda-' "$out/$name.txt"; then
        echo "cuda-bench: CUDA rows were skipped ($name): see the reason above" >&2
        exit 1
    fi
}

run default --names --json "$out/default.json"
run 32x2 --shape embd=32,layers=2,mlp=128 --json "$out/32x2.json"
if [[ -n ${SOAK:-} ]]; then
    run soak --repeats 1 --soak "$SOAK"
fi
echo "cuda-bench: done, results in $out/"
