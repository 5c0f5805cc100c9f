"""Reference-only: gguf-py's dequantize of raw ggml blocks, for qtrain's decoders to equal.

usage: ggml_dequantize.py DIR
DIR holds meta.json {"tensors": [{"name", "type" (GGMLQuantizationType name), "rows", "ne0"}]}
and for each tensor NAME.bin (its blocks). Writes NAME.ref.f32 (float32 [rows, ne0],
little-endian): gguf.quants.dequantize of the blocks.
"""
import json
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize


def main():
    d = sys.argv[1]
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    for t in meta["tensors"]:
        qtype = GGMLQuantizationType[t["type"]]
        block, size = GGML_QUANT_SIZES[qtype]
        raw = np.fromfile(os.path.join(d, t["name"] + ".bin"), dtype=np.uint8)
        if qtype == GGMLQuantizationType.F32:
            values = raw.view(np.float32)
        elif qtype == GGMLQuantizationType.F16:
            values = raw.view(np.float16).astype(np.float32)
        else:
            values = dequantize(raw.reshape(t["rows"], t["ne0"] // block * size), qtype)
        values = np.asarray(values, dtype=np.float32).reshape(t["rows"], t["ne0"])
        values.tofile(os.path.join(d, t["name"] + ".ref.f32"))


if __name__ == "__main__":
    main()
