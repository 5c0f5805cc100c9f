"""Checks qtrain's ggml block encoders against gguf-py and, when llama-cpp-python is installed,
against ggml's own quantizer.

usage: gguf_quants.py DIR
DIR holds x.f32 (float32 rows, ROWS x COLS, little-endian) with meta.json {"rows", "cols",
"types": [...]}, and for each type T: T.bin (qtrain's blocks) and T.deq.f32 (qtrain's test-side
reconstruction of T.bin with the formats.md formulas).
prints JSON {T: {"gguf_py_bytes_equal": bool|null (null: gguf-py has no quantizer for T),
                 "gguf_py_first_diff": byte index|null,
                 "dequant_equal": gguf-py's dequantize(T.bin) == T.deq.f32 exactly,
                 "max_abs_err": max |dequantize(T.bin) - x|, "max_rel_err_block": max over
                 blocks of max |err| / max |x| in the block,
                 "ggml_bytes_equal": bool|null (null: no llama_cpp), "ggml_first_diff"}}
ggml's quantizer is ggml_quantize_chunk from the libggml-base of llama-cpp-python's wheel (the
function llama-quantize calls; without an importance matrix it runs quantize_row_*_ref).
"""
import ctypes
import glob
import json
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize
from gguf.constants import GGML_QUANT_SIZES

# Types gguf-py can quantize in numpy (its K-quants only dequantize).
GGUF_PY_QUANTIZE = {"Q8_0", "Q4_0", "Q5_0"}


def ggml_base():
    try:
        import llama_cpp
    except ImportError:
        return None
    lib_dir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    candidates = sorted(glob.glob(os.path.join(lib_dir, "libggml-base.so*")))
    if not candidates:
        return None
    lib = ctypes.CDLL(candidates[0])
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_void_p]
    if hasattr(lib, "ggml_quantize_init"):
        lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    return lib


def ggml_quantize(lib, qtype, x):
    rows, cols = x.shape
    block, size = GGML_QUANT_SIZES[qtype]
    out = np.zeros(rows * cols // block * size, dtype=np.uint8)
    src = np.ascontiguousarray(x, dtype=np.float32)
    if hasattr(lib, "ggml_quantize_init"):
        lib.ggml_quantize_init(int(qtype))
    lib.ggml_quantize_chunk(int(qtype), src.ctypes.data, out.ctypes.data, 0, rows, cols, None)
    return out


def byte_check(r, prefix, ours, theirs):
    """r[prefix_bytes_equal], r[prefix_first_diff]; both None when theirs is None."""
    if theirs is None:
        fd, equal = None, None
    elif ours.shape != theirs.shape:
        fd, equal = -1, False
    else:
        idx = np.nonzero(ours != theirs)[0]
        fd = None if idx.size == 0 else int(idx[0])
        equal = fd is None
    r[prefix + "_bytes_equal"] = equal
    r[prefix + "_first_diff"] = fd


def main():
    d = sys.argv[1]
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    rows, cols = meta["rows"], meta["cols"]
    x = np.fromfile(os.path.join(d, "x.f32"), dtype="<f4").reshape(rows, cols)
    lib = ggml_base()
    result = {}
    for name in meta["types"]:
        qtype = GGMLQuantizationType[name]
        block, size = GGML_QUANT_SIZES[qtype]
        ours = np.fromfile(os.path.join(d, name + ".bin"), dtype=np.uint8)
        r = {}
        byte_check(r, "gguf_py", ours,
                   quantize(x, qtype).reshape(-1) if name in GGUF_PY_QUANTIZE else None)
        deq = dequantize(ours.reshape(rows, cols // block * size), qtype).astype(np.float32)
        our_deq = np.fromfile(os.path.join(d, name + ".deq.f32"), dtype="<f4").reshape(rows, cols)
        r["dequant_equal"] = bool(np.array_equal(deq, our_deq))
        err = np.abs(deq.astype(np.float64) - x)
        r["max_abs_err"] = float(err.max())
        blocks_err = err.reshape(-1, block).max(axis=1)
        blocks_max = np.abs(x.astype(np.float64)).reshape(-1, block).max(axis=1)
        nz = blocks_max > 0
        r["max_rel_err_block"] = float((blocks_err[nz] / blocks_max[nz]).max()) if nz.any() else 0.0
        r["zero_blocks_exact"] = bool((blocks_err[~nz] == 0).all())
        byte_check(r, "ggml", ours, ggml_quantize(lib, qtype, x) if lib is not None else None)
        result[name] = r
    print(json.dumps(result))


if __name__ == "__main__":
    main()
