"""Reference-only: quantize tensors with bitsandbytes' 4-bit functions on CPU.

Usage: bnb_quantize.py INPUT.safetensors OUTPUT.safetensors
For every tensor X of INPUT and every case C = "<nf4|fp4>.<blocksize>.<plain|nested>"
(blocksizes 64 and 128), writes under the module name M = "X.C":
  M.weight, M.weight.<key>   the entries of bnb's Linear4bit state dict (QuantState.as_dict(
                             packed=True)): packed codes, absmax, quant_map, nested_*, quant_state
  M.offset                   float32 [1], the nested offset (nested cases)
  M.dequant                  bnb.functional.dequantize_4bit, in the input's dtype
qtrain never runs this; its interop tests compare against it.
"""
import sys

import bitsandbytes.functional as F
import bnb_reference_kernels  # noqa: F401  (same values on every CPU)
import torch
from safetensors.torch import load_file, save_file


def main():
    inputs = load_file(sys.argv[1])
    out = {}
    for name, x in inputs.items():
        for quant_type in ("nf4", "fp4"):
            for blocksize in (64, 128):
                for nested in (False, True):
                    module = f"{name}.{quant_type}.{blocksize}.{'nested' if nested else 'plain'}"
                    packed, state = F.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type,
                                                    compress_statistics=nested)
                    out[f"{module}.weight"] = packed
                    for key, value in state.as_dict(packed=True).items():
                        out[f"{module}.weight.{key}"] = value
                    if nested:
                        out[f"{module}.offset"] = state.offset.reshape(1).float()
                    out[f"{module}.dequant"] = F.dequantize_4bit(packed, state)
    save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[2])


if __name__ == "__main__":
    main()
