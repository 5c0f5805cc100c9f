"""Reference-only: GPTQ's asymmetric 4-bit round-to-nearest quantizer, group-wise, in torch.

Usage: qalora_rtn.py INPUT.safetensors OUTPUT.safetensors
For every 2-D tensor X [out, in] of INPUT and every group size g in (32, 64, 128) dividing `in`,
writes, computed in float32 like GPTQ's Quantizer.find_params / quantize (formats.md §8):
  X.g<g>.codes   uint8 [out, in]      q = clamp(round(w / scale) + zero, 0, 15)
  X.g<g>.scales  float32 [out, in/g]  (xmax - xmin) / 15 with xmin = min(min w, 0),
                                      xmax = max(max w, 0), both zero -> (-1, +1)
  X.g<g>.zeros   float32 [out, in/g]  round(-xmin / scale)
  X.g<g>.dequant float32 [out, in]    scale * (q - zero)
qtrain never runs this; its tests compare against it.
"""
import sys

import torch
from safetensors.torch import load_file, save_file


def rtn_int4(w, g):
    out, cols = w.shape
    x = w.float().reshape(out, cols // g, g)
    zero_t = torch.zeros(x.shape[:2])
    xmin = torch.minimum(x.min(dim=2).values, zero_t)
    xmax = torch.maximum(x.max(dim=2).values, zero_t)
    empty = (xmin == 0) & (xmax == 0)
    xmin[empty] = -1
    xmax[empty] = 1
    maxq = torch.tensor(15)
    scale = (xmax - xmin) / maxq
    zero = torch.round(-xmin / scale)
    q = torch.clamp(torch.round(x / scale.unsqueeze(2)) + zero.unsqueeze(2), 0, maxq)
    dequant = scale.unsqueeze(2) * (q - zero.unsqueeze(2))
    return (q.to(torch.uint8).reshape(out, cols), scale, zero, dequant.reshape(out, cols))


def main():
    inputs = load_file(sys.argv[1])
    out = {}
    for name, w in inputs.items():
        for g in (32, 64, 128):
            if w.dim() != 2 or w.shape[1] % g:
                continue
            codes, scales, zeros, dequant = rtn_int4(w, g)
            out[f"{name}.g{g}.codes"] = codes
            out[f"{name}.g{g}.scales"] = scales
            out[f"{name}.g{g}.zeros"] = zeros
            out[f"{name}.g{g}.dequant"] = dequant
    save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[2])


if __name__ == "__main__":
    main()
