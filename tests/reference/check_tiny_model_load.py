"""Loads qtrain tiny model directories with transformers and runs one forward pass on each.

usage: check_tiny_model_load.py MODEL_DIR...
prints a JSON list, one object per directory: {"dir", "class", "dtype", "num_parameters",
"missing", "unexpected", "mismatched", "logits_shape", "logits_finite", "logits_std"}
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM


def check(model_dir):
    model, info = AutoModelForCausalLM.from_pretrained(model_dir, output_loading_info=True)
    model.eval()
    ids = torch.arange(3, 3 + 96).remainder(model.config.vocab_size).unsqueeze(0)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    return {
        "dir": model_dir,
        "class": type(model).__name__,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "missing": sorted(info.get("missing_keys", [])),
        "unexpected": sorted(info.get("unexpected_keys", [])),
        "mismatched": [str(m) for m in info.get("mismatched_keys", [])],
        "logits_shape": list(logits.shape),
        "logits_finite": bool(torch.isfinite(logits).all()),
        "logits_std": float(logits.std()),
    }


def main():
    print(json.dumps([check(model_dir) for model_dir in sys.argv[1:]]))


if __name__ == "__main__":
    main()
