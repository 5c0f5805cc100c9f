"""Reference-only: bitsandbytes' AdamW8bit on CPU, step by step.

Usage: optim_bnb_adamw8bit.py INPUT.safetensors OUTPUT.safetensors LR BETA1 BETA2 EPS WD
INPUT holds, per parameter N, "N.param" (initial value) and "N.grad.<k>" for steps k = 1..S.
Runs bnb.optim.AdamW8bit (blockwise, min_8bit_size 4096) over all parameters and writes, after
every step k: "N.param.<k>", "N.state1.<k>", "N.state2.<k>" (uint8 codes, or float32 moments for
small parameters) and, for 8-bit states, "N.absmax1.<k>", "N.absmax2.<k>"; also "qmap1"/"qmap2".
qtrain never runs this; its interop tests compare against it.
"""
import sys

import bitsandbytes as bnb
import torch
from safetensors.torch import load_file, save_file


def main():
    inputs = load_file(sys.argv[1])
    lr, beta1, beta2, eps, wd = (float(x) for x in sys.argv[3:8])
    names = sorted(k[: -len(".param")] for k in inputs if k.endswith(".param"))
    params = {n: torch.nn.Parameter(inputs[f"{n}.param"].clone()) for n in names}
    steps = max(int(k.rsplit(".", 1)[1]) for k in inputs if ".grad." in k)
    opt = bnb.optim.AdamW8bit(list(params.values()), lr=lr, betas=(beta1, beta2), eps=eps,
                              weight_decay=wd)
    out = {}
    for k in range(1, steps + 1):
        for n in names:
            params[n].grad = inputs[f"{n}.grad.{k}"].clone()
        opt.step()
        for n in names:
            state = opt.state[params[n]]
            out[f"{n}.param.{k}"] = params[n].detach().clone()
            for key in ("state1", "state2", "absmax1", "absmax2"):
                if key in state:
                    out[f"{n}.{key}.{k}"] = state[key].clone()
            if "qmap1" in state:
                out["qmap1"] = state["qmap1"].clone()
                out["qmap2"] = state["qmap2"].clone()
    save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[2])


if __name__ == "__main__":
    main()
