"""Reference-only: load qexport's outputs with the implementations users would load them with.

Usage: check_exports.py INPUTS.json OUT.safetensors [--merged NAME DIR]... [--peft BASE ADAPTER]
                        [--nf4 DIR] [--gptq DIR]
INPUTS.json holds {"input_ids": [[...], ...]}. Writes OUT.safetensors with float32 tensors:
  "merged.<NAME>"  logits of transformers' AutoModelForCausalLM on DIR (a merged export)
  "peft"           logits of PeftModel.from_pretrained(BASE, ADAPTER)
  "nf4"            logits of transformers + bitsandbytes on the nf4 export (quantization_config
                   from its config.json, Linear4bit compute switched to float32)
  "gptq"           logits of the GPTQ export, dequantized here from its qweight/qzeros/scales/
                   g_idx per the AutoGPTQ v1 layout (no GPTQ kernel runs on this CPU machine) and
                   run as a dense model built from its config.json
  "gptq_weight.<module>"  the dequantized weight [out, in] of every GPTQ projection
Every logits tensor is [B, T, V]. One process: importing transformers is the slow part.
"""
import json
import sys

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM


def logits_of(model, input_ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits.float().contiguous()


def load_dense(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                attn_implementation="eager")


def unpack_int32(packed, axis_len):
    """int32 [..., n] holding 8 nibbles each (value j at bits 4j) -> int64 [..., n*8]."""
    u = packed.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(0, 32, 4, dtype=torch.int64)
    nib = (u.unsqueeze(-1) >> shifts) & 0xF
    return nib.reshape(*packed.shape[:-1], packed.shape[-1] * 8)[..., :axis_len]


def dequantize_gptq(directory):
    index_path = directory + "/model.safetensors.index.json"
    try:
        with open(index_path) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    except FileNotFoundError:
        files = ["model.safetensors"]
    tensors = {}
    for name in files:
        with safe_open(directory + "/" + name, "pt") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    with open(directory + "/config.json") as f:
        qc = json.load(f)["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["bits"] == 4, qc
    assert qc.get("checkpoint_format", "gptq") == "gptq", qc
    state, weights = {}, {}
    for key, value in tensors.items():
        if key.endswith((".qzeros", ".scales", ".g_idx")):
            continue
        if key.endswith(".qweight"):
            module = key[: -len(".qweight")]
            qweight = value                                   # [K/8, N]
            k, n = qweight.shape[0] * 8, qweight.shape[1]
            # qweight[r, c] bits 4j = code of input 8r+j: unpack along the input dim.
            codes = unpack_int32(qweight.t().contiguous(), k).t()   # [K, N]
            zeros = unpack_int32(tensors[module + ".qzeros"], n) + 1  # v1: zero - 1 stored
            scales = tensors[module + ".scales"].float()         # [G, N]
            g_idx = tensors[module + ".g_idx"].long()            # [K]
            w = scales[g_idx] * (codes.float() - zeros[g_idx].float())  # [K, N]
            state[module + ".weight"] = w.t().contiguous()
            weights["gptq_weight." + module] = w.t().contiguous()
        else:
            state[key] = value.float()
    config = AutoConfig.from_pretrained(directory)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                             attn_implementation="eager")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("rotary_emb.inv_freq")]
    if config.tie_word_embeddings:
        missing = [m for m in missing if m != "lm_head.weight"]
        model.tie_weights()
    if missing or unexpected:
        sys.exit(f"GPTQ export: missing {missing}, unexpected {unexpected}")
    return model, weights


def main():
    args = sys.argv[1:]
    with open(args[0]) as f:
        input_ids = torch.tensor(json.load(f)["input_ids"], dtype=torch.long)
    out_path = args[1]
    out = {}
    i = 2
    while i < len(args):
        flag = args[i]
        if flag == "--merged":
            out["merged." + args[i + 1]] = logits_of(load_dense(args[i + 2]), input_ids)
            i += 3
        elif flag == "--peft":
            from peft import PeftModel
            model = PeftModel.from_pretrained(load_dense(args[i + 1]), args[i + 2])
            out["peft"] = logits_of(model, input_ids)
            i += 3
        elif flag == "--nf4":
            import bitsandbytes as bnb
            import bnb_reference_kernels  # noqa: F401  (same values on every CPU)
            model = AutoModelForCausalLM.from_pretrained(args[i + 1], dtype=torch.float32,
                                                         attn_implementation="eager")
            linear4 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
            if not linear4:
                sys.exit("nf4 export: transformers made no Linear4bit")
            # The file asks for bfloat16 compute; float32 here so that the comparison with
            # qtrain's float32 forward sees the stored 4-bit weights alone.
            for m in linear4:
                m.compute_dtype = torch.float32
            out["nf4"] = logits_of(model, input_ids)
            i += 2
        elif flag == "--gptq":
            model, weights = dequantize_gptq(args[i + 1])
            out["gptq"] = logits_of(model, input_ids)
            out.update(weights)
            i += 2
        else:
            sys.exit("unknown flag " + flag)
    save_file(out, out_path)


if __name__ == "__main__":
    main()
