"""Reference-only: a GGUF or GPTQ export rewritten as a dense float32 Hugging Face directory, with
the readers users have (gguf-py's dequantize; the AutoGPTQ v1 formula in numpy), so that qeval
can evaluate what the export holds independently of qtrain's own readers.

usage: export_as_dense.py gguf FILE BASE_DIR OUT_DIR
       export_as_dense.py gptq DIR OUT_DIR
gguf: the tensors of FILE by HF name (names mapped and the llama Q/K rows un-permuted as in
read_gguf.py), config.json and the tokenizer files from BASE_DIR.
gptq: every projection w = scales[g_idx] * (code - (qzero + 1)) (qweight / qzeros unpacked
nibble by nibble), every other tensor as float32, config.json without its quantization_config.
OUT_DIR gets config.json, model.safetensors and the tokenizer files.
"""
import json
import os
import shutil
import sys

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType
from gguf.quants import dequantize
from safetensors.numpy import load_file, save_file

from read_gguf import TOP_NAMES, LAYER_NAMES, unpermute

SIDE_FILES = ["tokenizer.model", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "generation_config.json"]


def hf_name(gguf):
    for hf, g in TOP_NAMES.items():
        if g == gguf:
            return hf
    parts = gguf.split(".")
    if parts[0] != "blk":
        return None
    module = ".".join(parts[2:-1])
    for hf_module, g in LAYER_NAMES.items():
        if g == module:
            return f"model.layers.{parts[1]}.{hf_module}.{parts[-1]}"
    return None


def from_gguf(path, base_dir):
    with open(os.path.join(base_dir, "config.json")) as f:
        config = json.load(f)
    permute = config["model_type"] in ("llama", "mistral")
    tensors = {}
    for t in GGUFReader(path).tensors:
        if t.name == "rope_freqs.weight":
            continue
        name = hf_name(t.name)
        assert name is not None, t.name
        shape = [int(d) for d in reversed(t.shape)]
        if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            w = np.array(t.data).astype(np.float32)
        else:
            w = dequantize(np.array(t.data), t.tensor_type).astype(np.float32)
        w = w.reshape(shape)
        if permute and ".self_attn.q_proj." in name:
            w = unpermute(w, config["num_attention_heads"])
        elif permute and ".self_attn.k_proj." in name:
            w = unpermute(w, config["num_key_value_heads"])
        tensors[name] = np.ascontiguousarray(w)
    return config, tensors


def unpack(packed):
    """int32 [rows, n] holding 8 nibbles each (value j at bits 4j) -> int64 [rows, n*8]."""
    u = packed.astype(np.int64) & 0xFFFFFFFF
    nibbles = [(u >> (4 * j)) & 0xF for j in range(8)]
    return np.stack(nibbles, axis=-1).reshape(packed.shape[0], packed.shape[1] * 8)


def from_gptq(directory):
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    assert config["quantization_config"]["quant_method"] == "gptq"
    del config["quantization_config"]
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    stored = {}
    for name in files:
        stored.update(load_file(os.path.join(directory, name)))
    tensors = {}
    for key, value in stored.items():
        if key.endswith((".qzeros", ".scales", ".g_idx")):
            continue
        if key.endswith(".qweight"):
            module = key[: -len(".qweight")]
            codes = unpack(value.T).T                               # [in, out]
            zeros = unpack(stored[module + ".qzeros"]) + 1          # [groups, out]
            scales = stored[module + ".scales"].astype(np.float32)  # [groups, out]
            g = stored[module + ".g_idx"].astype(np.int64)          # [in]
            w = scales[g] * (codes.astype(np.float32) - zeros[g].astype(np.float32))
            tensors[module + ".weight"] = np.ascontiguousarray(w.T)
        else:
            tensors[key] = value.astype(np.float32)
    return config, tensors


def main():
    if sys.argv[1] == "gguf":
        config, tensors = from_gguf(sys.argv[2], sys.argv[3])
        side_dir, out = sys.argv[3], sys.argv[4]
    else:
        config, tensors = from_gptq(sys.argv[2])
        side_dir, out = sys.argv[2], sys.argv[3]
    config["torch_dtype"] = "float32"
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    for name in SIDE_FILES:
        if os.path.exists(os.path.join(side_dir, name)):
            shutil.copy(os.path.join(side_dir, name), os.path.join(out, name))
    print(json.dumps({"tensors": len(tensors)}))


if __name__ == "__main__":
    main()
