"""Reference-only: transformers' learning-rate schedules.

Usage: optim_schedules.py CASE...   with CASE = KIND,BASE_LR,WARMUP,TOTAL,MIN_LR_RATIO,STEPS
KIND is constant | linear | cosine. Prints a JSON list with one list per case: the lr that
optimizer steps 0..STEPS-1 use, read with get_last_lr() before each step from the LambdaLR of
get_constant_schedule_with_warmup, get_linear_schedule_with_warmup,
get_cosine_schedule_with_warmup (MIN_LR_RATIO 0) or get_cosine_with_min_lr_schedule_with_warmup.
qtrain never runs this; its tests compare against it.
"""
import json
import sys

import torch
from transformers import optimization as opt


def schedule_lrs(case):
    kind, base_lr, warmup, total, min_ratio, steps = case.split(",")
    base_lr, min_ratio = float(base_lr), float(min_ratio)
    warmup, total, steps = int(warmup), int(total), int(steps)
    param = torch.nn.Parameter(torch.zeros(1))
    sgd = torch.optim.SGD([param], lr=base_lr)
    if kind == "constant":
        sched = opt.get_constant_schedule_with_warmup(sgd, warmup)
    elif kind == "linear":
        sched = opt.get_linear_schedule_with_warmup(sgd, warmup, total)
    elif min_ratio > 0:
        sched = opt.get_cosine_with_min_lr_schedule_with_warmup(sgd, warmup, total,
                                                                min_lr_rate=min_ratio)
    else:
        sched = opt.get_cosine_schedule_with_warmup(sgd, warmup, total)
    lrs = []
    for _ in range(steps):
        lrs.append(sched.get_last_lr()[0])
        sgd.step()
        sched.step()
    return lrs


def main():
    print(json.dumps([schedule_lrs(case) for case in sys.argv[1:]]))


if __name__ == "__main__":
    main()
