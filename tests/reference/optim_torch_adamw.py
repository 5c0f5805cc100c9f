"""Reference-only: torch.optim.AdamW (single-tensor path) step by step.

Usage: optim_torch_adamw.py INPUT.safetensors OUTPUT.safetensors LR BETA1 BETA2 EPS WD
INPUT holds "param" (float32) and "grad.<k>" for steps k = 1..S. Writes "param.<k>" after every
step and the final "exp_avg", "exp_avg_sq".
qtrain never runs this; its tests compare against it.
"""
import sys

import torch
from safetensors.torch import load_file, save_file


def main():
    inputs = load_file(sys.argv[1])
    lr, beta1, beta2, eps, wd = (float(x) for x in sys.argv[3:8])
    param = torch.nn.Parameter(inputs["param"].clone())
    steps = sum(1 for k in inputs if k.startswith("grad."))
    opt = torch.optim.AdamW([param], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd,
                            foreach=False, fused=False)
    out = {}
    for k in range(1, steps + 1):
        param.grad = inputs[f"grad.{k}"].clone()
        opt.step()
        out[f"param.{k}"] = param.detach().clone()
    state = opt.state[param]
    out["exp_avg"] = state["exp_avg"].clone()
    out["exp_avg_sq"] = state["exp_avg_sq"].clone()
    save_file(out, sys.argv[2])


if __name__ == "__main__":
    main()
