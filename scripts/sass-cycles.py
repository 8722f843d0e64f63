#!/usr/bin/env python3
"""Static estimate of one token of each one-warp CUDA kernel (no GPU needed).

    scripts/sass-cycles.py [--shape SHAPE | --source FILE] [--by-line KERNEL]

Renders the CUDA C of SHAPE (`cargo run --example inspect -- cuda`), compiles it as the bench does
(NVRTC for compute_90 with the options the source names, here with line information) and
assembles it for sm_90 with ptxas, then reads the SASS (nvdisasm) of every `mg_persistent*`
kernel: its token loop (the outermost loop), taken once, in order, each instruction once. The
estimate follows the scheduling that ptxas encodes in each instruction: it issues after the
results it waits for (its scoreboard wait mask) and holds the warp for its stall count.
Variable-latency results are assumed ready after LATENCY cycles (an L1 hit for global loads).
Cold code is skipped: blocks that call a slow path (division, square root) and the attention's
fallback to a running maximum (the code inlined from the line calling `mg_l_softmax<E, H,
true>`). Loops inside the token loop (the lane attention's loop over older positions) count
once.

One warp alone on an SM hides no latency, so its token loop is this chain. How close the
estimate came to the GPU's measured cycles is in docs/results.md ("Estimated before measured").
An estimate, to compare kernels before a GPU measures them, not a figure to report as one.

Tools: NVRTC (libnvrtc.so* in $NVRTC_LIB, else the loader's path), ptxas ($MICROGPT_PTXAS, else
PATH) and nvdisasm ($MICROGPT_NVDISASM, else PATH). The pip wheels nvidia-cuda-nvrtc-cu12,
nvidia-cuda-nvcc-cu12 and nvidia-cuda-nvdisasm provide them (as .ci/run installs them).
"""

import argparse
import collections
import ctypes
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

# Cycles until a variable-latency instruction's result is ready (the rest: OTHER).
LATENCY = {"LDS": 30, "LDG": 35, "SHFL": 26, "MUFU": 18, "S2R": 20, "VOTE": 10, "LDC": 20, "I2FP": 6, "BREV": 6, "FLO": 10}
OTHER = 20
# A register read by a variable-latency instruction (its read scoreboard) is free after this.
READ = 8
CLOCK_MHZ = 1980


def tool(env, name):
    path = os.environ.get(env) or shutil.which(name)
    if not path:
        sys.exit(f"sass-cycles: {name} not found (set {env} or put it on PATH)")
    return path


def nvrtc():
    dirs = [os.environ.get("NVRTC_LIB", "")] + os.environ.get("LD_LIBRARY_PATH", "").split(":")
    for d in filter(None, dirs):
        for lib in sorted(glob.glob(os.path.join(d, "libnvrtc.so*"))):
            if "builtins" not in lib:
                return ctypes.CDLL(lib)
    try:
        return ctypes.CDLL("libnvrtc.so")
    except OSError:
        sys.exit("sass-cycles: NVRTC not found (set NVRTC_LIB to the folder of libnvrtc.so*)")


def compile_ptx(source):
    lib = nvrtc()
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"microgpt.cu", 0, None, None):
        sys.exit("sass-cycles: nvrtcCreateProgram failed")
    # The options the bench compiles with, as the source's header names them.
    named = re.search(r"^// NVRTC options: (.*?) \(and --gpu-architecture", source, re.M)
    if not named:
        sys.exit("sass-cycles: the source does not name its NVRTC options (// NVRTC options: ...)")
    opts = [b"--gpu-architecture=compute_90", b"-lineinfo"]
    opts += [o.encode() for o in named.group(1).split()]
    status = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    if status:
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        sys.exit("sass-cycles: NVRTC failed:\n" + log.value.decode())
    lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetPTX(prog, ptx)
    return ptx.value.decode()


class Instr:
    def __init__(self, addr, text, hi, chain):
        self.addr, self.text, self.chain = addr, text, chain
        c = hi >> 41  # the control bits of the 128-bit instruction (bits 105 and up)
        self.stall, self.write, self.read, self.wait = c & 15, (c >> 5) & 7, (c >> 8) & 7, (c >> 11) & 63
        self.op = re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0]
        self.block = 0


def kernels(listing):
    """{kernel: [Instr]} from `nvdisasm -gi -hex` output."""
    out = {}
    for part in re.split(r"\n\s*\.section\s+\.text\.", listing)[1:]:
        name = part.split(",", 1)[0]
        body, chain, pending, block = [], [], [], 0
        lines = part.split("\n")
        for i, line in enumerate(lines):
            m = re.match(r'\s*//## File ".*?", line (\d+)(?: inlined at ".*?", line (\d+))?', line)
            if m:
                pending += [int(g) for g in m.groups() if g]
                continue
            if re.match(r"\s*\.L_x_\d+:", line):
                block += 1
                continue
            m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;\s*/\* 0x([0-9a-f]{16}) \*/", line)
            if m:
                if pending:
                    chain, pending = pending, []
                hi = re.search(r"0x([0-9a-f]{16})", lines[i + 1])
                ins = Instr(int(m.group(1), 16), m.group(2), int(hi.group(1), 16), chain)
                ins.block = block
                body.append(ins)
                if re.search(r"\b(BRA|EXIT|RET)\b", ins.text):
                    block += 1
        labels = {}
        for m in re.finditer(r"(\.L_x_\d+):\s*\n(?:\s*//[^\n]*\n)*\s*/\*([0-9a-f]{4,})\*/", part):
            labels[m.group(1)] = int(m.group(2), 16)
        out[name] = (body, labels)
    return out


def token_loop(body, labels):
    loops = []
    for i, ins in enumerate(body):
        m = re.search(r"BRA\s+`?\(?(\.L_x_\d+)", ins.text)
        if m and labels.get(m.group(1), ins.addr) < ins.addr:
            start = next(j for j, x in enumerate(body) if x.addr == labels[m.group(1)])
            loops.append((start, i))
    if not loops:
        return None
    start, end = max(loops, key=lambda l: l[1] - l[0])
    return body[start : end + 1]


def estimate(loop, cold_lines, attribute):
    cold_blocks = {x.block for x in loop if x.op == "CALL"}
    t, ready, by = 0, [0] * 8, collections.Counter()
    for x in loop:
        if x.block in cold_blocks or any(c in cold_lines for c in x.chain):
            continue
        before = t
        for b in range(6):
            if x.wait >> b & 1:
                t = max(t, ready[b])
        if x.write != 7:
            ready[x.write] = max(ready[x.write], t + LATENCY.get(x.op, OTHER))
        if x.read != 7:
            ready[x.read] = max(ready[x.read], t + READ)
        t += max(x.stall, 1)
        by[attribute(x)] += t - before
    return t, by


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", help="as the bench takes it, e.g. embd=32,layers=2,mlp=128")
    ap.add_argument("--source", metavar="FILE", help="this CUDA C instead (as `inspect -- cuda` prints it)")
    ap.add_argument("--by-line", metavar="KERNEL", help="also the cycles of KERNEL by source line")
    args = ap.parse_args()
    if args.source:
        with open(args.source) as f:
            source = f.read()
    else:
        cmd = ["cargo", "run", "-q", "--example", "inspect", "--", "cuda"] + (["--shape", args.shape] if args.shape else [])
        source = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    src_lines = source.split("\n")
    cold = {i + 1 for i, l in enumerate(src_lines) if "mg_l_softmax<E, H, true>(" in l}
    # The bodies of the step functions (mg_step_*): one op a line.
    step_lines, inside = set(), False
    for i, l in enumerate(src_lines):
        if re.match(r"__device__ __forceinline__ int mg_step_", l):
            inside = True
        elif inside and l.startswith("}"):
            inside = False
        elif inside:
            step_lines.add(i + 1)
    with tempfile.TemporaryDirectory() as d:
        ptx, cubin = os.path.join(d, "k.ptx"), os.path.join(d, "k.cubin")
        with open(ptx, "w") as f:
            f.write(compile_ptx(source))
        subprocess.run([tool("MICROGPT_PTXAS", "ptxas"), "-arch=sm_90", "-lineinfo", ptx, "-o", cubin], check=True)
        listing = subprocess.run(
            [tool("MICROGPT_NVDISASM", "nvdisasm"), "-gi", "-hex", "-c", cubin], check=True, capture_output=True, text=True
        ).stdout
    found = kernels(listing)
    names = sorted(k for k in found if k.startswith("mg_persistent"))
    if not names:
        sys.exit("sass-cycles: no mg_persistent* kernel in the listing")
    print(f"{args.source or 'shape ' + (args.shape or 'default')}; sm_90; token loop taken once, cold paths skipped; an estimate (against measured figures: docs/results.md)")
    print(f"{'kernel':22} {'SASS in loop':>12} {'cycles/token':>13} {'tok/s at ' + str(CLOCK_MHZ) + ' MHz':>18}")
    for name in names:
        loop = token_loop(*found[name])
        if loop is None:
            sys.exit(f"sass-cycles: {name} has no loop")
        def attribute(x):
            """The line of a step function (an op) that an instruction comes from, if any."""
            return next((c for c in x.chain if c in step_lines), None)

        cycles, by = estimate(loop, cold, attribute)
        print(f"{name:22} {len(loop):12} {cycles:13} {CLOCK_MHZ * 1e6 / cycles / 1e6:15.2f} M")
        if args.by_line == name:
            for line, c in sorted(by.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
                text = src_lines[line - 1].strip()[:100] if line else "(the loop itself)"
                print(f"    {c:6}  {text}")


if __name__ == "__main__":
    main()
