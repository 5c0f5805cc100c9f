#!/usr/bin/env python3
"""bitsandbytes' CPU 4-bit dequantize on bench_quant's shape, for the ratio against qtrain's.

A 4096x4096 bfloat16 weight (randn * 0.02, seed 0) quantized to NF4 with blocksize 64 (no
double quantization), then bitsandbytes.functional.dequantize_4bit timed for bfloat16, float16 and
float32 outputs at 1 and 2 threads; a memcpy (Tensor.copy_) of the same output bytes for scale.
Same convention as tools/bench/bench_quant.cpp: GB/s = 10^9 bytes of output written per second
(bytes of BF16 input read for quantize). Each configuration runs in a fresh process with
OMP_NUM_THREADS and torch.set_num_threads set, so bitsandbytes' OpenMP loops see the count.

    ~/.cache/qtrain/venv/bin/python tools/bench/bnb_cpu_dequant.py [--seconds 2]
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROWS, COLS, BLOCKSIZE = 4096, 4096, 64


def best_seconds(fn, budget):
    """Median-free best-of timing: the fastest of the runs that fit in `budget` seconds."""
    fn()  # warm up
    best, spent = float("inf"), 0.0
    while spent < budget:
        start = time.perf_counter()
        fn()
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
    return best


def measure(threads, budget):
    import torch
    import bitsandbytes
    import bitsandbytes.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    w = (torch.randn(ROWS, COLS) * 0.02).to(torch.bfloat16)
    packed, state = F.quantize_4bit(w, blocksize=BLOCKSIZE, quant_type="nf4",
                                    compress_statistics=False)
    out = {"threads": torch.get_num_threads(), "bitsandbytes": bitsandbytes.__version__,
           "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    quantize = best_seconds(lambda: F.quantize_4bit(w, blocksize=BLOCKSIZE, quant_type="nf4",
                                                    compress_statistics=False), budget)
    out["quantize_GBps"] = ROWS * COLS * 2 / quantize / 1e9
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        state.dtype = dtype
        name = str(dtype).replace("torch.", "")
        reference = F.dequantize_4bit(packed, state)
        assert reference.dtype == dtype and reference.shape == (ROWS, COLS)
        took = best_seconds(lambda: F.dequantize_4bit(packed, state), budget)
        nbytes = ROWS * COLS * reference.element_size()
        out[f"dequantize_{name}_GBps"] = nbytes / took / 1e9
        src, dst = torch.empty_like(reference), torch.empty_like(reference)
        src.copy_(reference)
        copy = best_seconds(lambda: dst.copy_(src), budget)
        out[f"memcpy_{name}_GBps"] = nbytes / copy / 1e9
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per figure")
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        print(json.dumps(measure(args.threads, args.seconds)))
        return
    for threads in (1, 2):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        line = subprocess.run([sys.executable, __file__, "--threads", str(threads), "--seconds",
                               str(args.seconds)], env=env, check=True, capture_output=True,
                              text=True).stdout.strip().splitlines()[-1]
        result = json.loads(line)
        print(f"threads={result['threads']} bitsandbytes {result['bitsandbytes']} "
              f"torch {result['torch']} ({result['cpu_capability']})")
        for key, value in result.items():
            if key.endswith("GBps"):
                print(f"  {key[:-5]:<22} {value:7.2f} GB/s")


if __name__ == "__main__":
    main()
