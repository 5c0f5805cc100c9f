"""Reference-only: load bitsandbytes 4-bit model directories with transformers on CPU.

Usage: load_bnb_4bit.py INPUTS.json MODEL_DIR...
INPUTS.json holds {"input_ids": [[...], ...]}. Each MODEL_DIR is loaded with
AutoModelForCausalLM (the quantization config comes from its config.json). Every module with a
`<module>.weight.quant_state.bitsandbytes__*` entry must have become a bnb Linear4bit holding
exactly the file's bytes (packed codes, absmax, nested absmax, offset), and no other module may
be a Linear4bit. Then writes MODEL_DIR/bnb_logits.safetensors ("logits", float32 [B, T, V]).
Exits non-zero with a message on any mismatch. qtrain never runs this.
"""
import json
import os
import sys

import bitsandbytes as bnb
import bnb_reference_kernels  # noqa: F401  (same values on every CPU)
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def file_tensors(model_dir):
    tensors = {}
    for name in sorted(os.listdir(model_dir)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(model_dir, name), "pt") as f:
                for key in f.keys():
                    tensors[key] = f.get_tensor(key)
    return tensors


def check_module(name, module, tensors):
    if not isinstance(module, bnb.nn.Linear4bit):
        fail(f"{name}: expected a bnb Linear4bit, transformers made a {type(module).__name__}")
    state = module.weight.quant_state
    header = [k for k in tensors if k.startswith(f"{name}.weight.quant_state.bitsandbytes__")][0]
    meta = json.loads(bytes(tensors[header].tolist()).decode("utf-8"))
    expect = [("weight", module.weight.data, tensors[f"{name}.weight"]),
              ("absmax", state.absmax, tensors[f"{name}.weight.absmax"])]
    if state.nested:
        expect.append(("nested_absmax", state.state2.absmax, tensors[f"{name}.weight.nested_absmax"]))
        expect.append(("offset", state.offset.reshape(1).float(),
                       torch.tensor([meta["nested_offset"]], dtype=torch.float32)))
    elif "nested_offset" in meta:
        fail(f"{name}: file is nested, the loaded state is not")
    for what, loaded, stored in expect:
        if loaded.dtype != stored.dtype or not torch.equal(loaded.cpu(), stored):
            fail(f"{name}: loaded {what} differs from the file's bytes")
    if state.quant_type != meta["quant_type"] or state.blocksize != meta["blocksize"]:
        fail(f"{name}: loaded quant_type/blocksize {state.quant_type}/{state.blocksize}")
    if list(state.shape) != meta["shape"]:
        fail(f"{name}: loaded shape {list(state.shape)}")


def run(model_dir, inputs):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    tensors = file_tensors(model_dir)
    quantized = sorted(k[:k.index(".weight.quant_state.")] for k in tensors
                       if ".weight.quant_state.bitsandbytes__" in k)
    if not quantized:
        fail(f"{model_dir}: no 4-bit weights")
    for name in quantized:
        check_module(name, model.get_submodule(name), tensors)
    linear4bit = sorted(n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit))
    if linear4bit != quantized:
        fail(f"{model_dir}: Linear4bit modules {linear4bit} != quantized entries {quantized}")
    ids = torch.tensor(inputs["input_ids"], dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float().contiguous()
    save_file({"logits": logits}, os.path.join(model_dir, "bnb_logits.safetensors"))
    print(f"{model_dir}: {len(quantized)} Linear4bit modules hold the file's bytes")


def main():
    with open(sys.argv[1]) as f:
        inputs = json.load(f)
    for model_dir in sys.argv[2:]:
        run(model_dir, inputs)


if __name__ == "__main__":
    main()
