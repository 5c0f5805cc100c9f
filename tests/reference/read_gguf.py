"""Reads a GGUF file with PyPI's `gguf` package and checks it against the HF checkpoint it came from.

usage: read_gguf.py GGUF_PATH HF_DIR
prints JSON:
  {"version", "tensor_count", "kv_count", "alignment", "data_offset", "file_size",
   "metadata": [{"key", "type", "value"}],       # arrays: type "ARRAY[<elem>]", value
                                                 #   {"count", "head": first 8, "tail": last 4}
   "tensors": [{"name", "shape" (ne order), "type", "offset", "n_bytes"}],
   "checks": {"layout": [...], "data": [...], "tokenizer": [...]},   # problems found, [] if none
   "compared": {gguf tensor name: max |gguf - expected|}}
exits 1 when any check found a problem.

Independent of qtrain: tensor names are mapped here, the llama Q/K permutation is undone here
(numpy), every tensor is compared with the HF safetensors (F32: exactly; F16: exactly equal to
numpy's float16 rounding of the original; quantized: gguf-py's dequantize within the type's
error bound relative to each block's largest |value|, and for Q8_0 / Q4_0 / Q5_0 the bytes equal
to gguf-py's quantize of the original), each tensor's type with llama-quantize's choice for the
file type (restated here from llama-quant.cpp), rope_freqs with the llama3 formula, and the
vocabulary with the `sentencepiece` package (tokenizer.model) or `tokenizers` (tokenizer.json).
"""
import json
import math
import os
import sys

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType, GGUFValueType
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize
from safetensors import safe_open

LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
TOP_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_name(hf):
    if hf in TOP_NAMES:
        return TOP_NAMES[hf]
    if not hf.startswith("model.layers."):
        return None
    rest = hf[len("model.layers."):]
    layer, _, rest = rest.partition(".")
    module, _, suffix = rest.rpartition(".")
    if module not in LAYER_NAMES:
        return None
    return f"blk.{layer}.{LAYER_NAMES[module]}.{suffix}"


def hf_tensors(hf_dir):
    """name -> (file, name) for every tensor of the checkpoint."""
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return {name: os.path.join(hf_dir, shard) for name, shard in weight_map.items()}
    path = os.path.join(hf_dir, "model.safetensors")
    with safe_open(path, framework="pt") as f:
        return {name: path for name in f.keys()}


def load_hf(path, name):
    with safe_open(path, framework="pt") as f:
        return f.get_tensor(name).float().numpy()


def unpermute(w, n_head):
    """GGUF llama row order -> HF order: per head, row 2j+t came from row t*hd/2 + j."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute(w, n_head):
    """HF row order -> GGUF llama order (the inverse of unpermute)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


Q = GGMLQuantizationType
# general.file_type -> the type of ordinary matrices.
BASE_TYPE = {0: Q.F32, 1: Q.F16, 7: Q.Q8_0, 2: Q.Q4_0, 15: Q.Q4_K}
# Worst |error| of a block relative to the block's largest |value| (see test_gguf_quant.cpp).
REL_BOUND = {Q.Q8_0: 0.5 / 127 + 0.00049, Q.Q4_0: 0.126, Q.Q5_0: 0.063, Q.Q4_K: 0.12,
             Q.Q6_K: 0.025}
REQUANTIZE = {Q.Q8_0, Q.Q4_0, Q.Q5_0}


def expected_type(name, ne, file_type, n_layer, tied):
    """llama-quantize's type for a tensor (llama-quant.cpp, no imatrix, dense model)."""
    base = BASE_TYPE[file_type]
    if len(ne) == 1 or base in (Q.F32, Q.F16):
        return Q.F32 if len(ne) == 1 else base
    block = lambda t: GGML_QUANT_SIZES[t][0]
    nx = ne[0]
    new = base
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        if nx % block(base):
            new = Q.Q8_0
        elif base != Q.Q8_0:
            new = Q.Q6_K
    elif file_type == 15 and name.startswith("blk.") and (
            name.endswith(".attn_v.weight") or name.endswith(".ffn_down.weight")):
        i = int(name.split(".")[1])
        if i < n_layer // 8 or i >= 7 * n_layer // 8 or (i - n_layer // 8) % 3 == 2:
            new = Q.Q6_K
    if nx % block(new):
        new = {Q.Q4_K: Q.Q5_0, Q.Q6_K: Q.Q8_0}.get(new, new)
        if nx % block(new):
            new = Q.F16
    return new


def block_relative_error(got, want, block):
    err = np.abs(got - want).reshape(-1, block).max(axis=1)
    amax = np.abs(want).reshape(-1, block).max(axis=1)
    if np.any(err[amax == 0] != 0):
        return float("inf")
    nz = amax > 0
    return float((err[nz] / amax[nz]).max()) if nz.any() else 0.0


def llama3_rope_freqs(config, head_dim):
    rp = config.get("rope_parameters") or config.get("rope_scaling")
    theta = config.get("rope_theta", rp.get("rope_theta", 10000.0))
    factor = rp["factor"]
    low, high = rp.get("low_freq_factor", 1.0), rp.get("high_freq_factor", 4.0)
    orig = rp.get("original_max_position_embeddings", 8192)
    out = []
    for j in range(head_dim // 2):
        freq = 1.0 / theta ** (2 * j / head_dim)
        wavelen = 2 * math.pi / freq
        if wavelen < orig / high:
            out.append(1.0)
        elif wavelen > orig / low:
            out.append(factor)
        else:
            smooth = (orig / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float64)


def field_json(field):
    main = field.types[0]
    if main == GGUFValueType.ARRAY:
        elem = field.types[-1]
        values = field.contents()
        return f"ARRAY[{elem.name}]", {"count": len(values), "head": values[:8],
                                       "tail": values[-4:]}
    return main.name, field.contents()


LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")


def check_bpe_tokenizer(reader, hf_dir, problems):
    """tokenizer.json against the gpt2-model metadata, as convert_hf_to_gguf writes it."""
    from tokenizers import Tokenizer
    path = os.path.join(hf_dir, "tokenizer.json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    tok = Tokenizer.from_file(path)

    def field(key):
        f = reader.get_field(key)
        return None if f is None else f.contents()

    if field("tokenizer.ggml.model") != "gpt2":
        problems.append(f"tokenizer.ggml.model {field('tokenizer.ggml.model')!r} != 'gpt2'")
    pre = data.get("pre_tokenizer") or {}
    patterns = [p["pattern"]["Regex"] for p in pre.get("pretokenizers", [pre])
                if p.get("type") == "Split"]
    want_pre = {LLAMA3_PATTERN: "llama-bpe", QWEN2_PATTERN: "qwen2"}.get(
        patterns[0] if patterns else None, "gpt-2")
    if field("tokenizer.ggml.pre") != want_pre:
        problems.append(f"tokenizer.ggml.pre {field('tokenizer.ggml.pre')!r} != {want_pre!r}")
    tokens = field("tokenizer.ggml.tokens")
    types = field("tokenizer.ggml.token_type")
    n = len(tokens)
    want_tokens = [f"[PAD{i}]" for i in range(n)]
    want_types = [5] * n
    for t, i in tok.get_vocab(with_added_tokens=False).items():
        want_tokens[i], want_types[i] = t, 1
    for i, added in tok.get_added_tokens_decoder().items():
        c = added.content
        special = added.special or (c.startswith("<|") and c.endswith("|>"))
        want_tokens[i] = c if special else c.replace("\u2581", " ")
        want_types[i] = 3 if special else 4
    for i in range(n):
        if tokens[i] != want_tokens[i] or types[i] != want_types[i]:
            problems.append(f"token {i}: {tokens[i]!r} type {types[i]} != {want_tokens[i]!r} "
                            f"type {want_types[i]}")
            if len(problems) > 10:
                return
    merges = data["model"]["merges"]
    want_merges = [m if isinstance(m, str) else " ".join(p.replace(" ", "\u0120") for p in m)
                   for m in merges]
    if field("tokenizer.ggml.merges") != want_merges:
        problems.append("merges differ from tokenizer.json's")
    config_path = os.path.join(hf_dir, "tokenizer_config.json")
    config = json.load(open(config_path, encoding="utf-8")) if os.path.exists(config_path) else {}
    for key in ("bos", "eos"):
        name = config.get(f"{key}_token")
        if isinstance(name, dict):
            name = name.get("content")
        if name is not None and field(f"tokenizer.ggml.{key}_token_id") != tok.token_to_id(name):
            problems.append(f"{key}_token_id {field(f'tokenizer.ggml.{key}_token_id')} != "
                            f"{tok.token_to_id(name)} ({name})")


def check_tokenizer(reader, hf_dir, problems):
    tokens_field = reader.get_field("tokenizer.ggml.tokens")
    spm_path = os.path.join(hf_dir, "tokenizer.model")
    if tokens_field is not None and not os.path.exists(spm_path):
        return check_bpe_tokenizer(reader, hf_dir, problems)
    if tokens_field is None or not os.path.exists(spm_path):
        return
    import sentencepiece
    sp = sentencepiece.SentencePieceProcessor(model_file=spm_path)
    tokens = tokens_field.contents()
    scores = reader.get_field("tokenizer.ggml.scores").contents()
    types = reader.get_field("tokenizer.ggml.token_type").contents()
    for i in range(sp.get_piece_size()):
        want_type = (2 if sp.is_unknown(i) else 3 if sp.is_control(i) else
                     6 if sp.is_byte(i) else 1)
        if tokens[i] != sp.id_to_piece(i) or scores[i] != np.float32(sp.get_score(i)) \
                or types[i] != want_type:
            problems.append(f"token {i}: {tokens[i]!r} {scores[i]} {types[i]} != "
                            f"{sp.id_to_piece(i)!r} {sp.get_score(i)} {want_type}")
            if len(problems) > 10:
                return
    for i in range(sp.get_piece_size(), len(tokens)):
        if types[i] not in (3, 4, 5):
            problems.append(f"token {i} beyond the sentencepiece model has type {types[i]}")
    for key, want in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unknown", sp.unk_id())):
        f = reader.get_field(f"tokenizer.ggml.{key}_token_id")
        if want >= 0 and (f is None or f.contents() != want):
            problems.append(f"{key}_token_id {None if f is None else f.contents()} != {want}")


def main():
    path, hf_dir = sys.argv[1], sys.argv[2]
    reader = GGUFReader(path)
    with open(os.path.join(hf_dir, "config.json")) as f:
        config = json.load(f)

    header = {k: reader.get_field(k).contents() for k in ("GGUF.version", "GGUF.tensor_count",
                                                            "GGUF.kv_count")}
    metadata = []
    for field in reader.fields.values():
        if field.name.startswith("GGUF."):
            continue
        typ, value = field_json(field)
        metadata.append({"key": field.name, "type": typ, "value": value})
    meta = {m["key"]: m["value"] for m in metadata}

    # Layout as ggml's loader demands it.
    layout = []
    alignment = meta.get("general.alignment", 32)
    file_size = os.path.getsize(path)
    if reader.data_offset % alignment:
        layout.append(f"data offset {reader.data_offset} not a multiple of {alignment}")
    expected_offset = 0
    tensors = []
    for t in reader.tensors:
        offset = t.data_offset - reader.data_offset
        if offset != expected_offset:
            layout.append(f"{t.name}: offset {offset} != {expected_offset}")
        expected_offset += (t.n_bytes + alignment - 1) // alignment * alignment
        tensors.append({"name": t.name, "shape": [int(d) for d in t.shape],
                        "type": t.tensor_type.name, "offset": offset, "n_bytes": int(t.n_bytes)})
    if reader.data_offset + expected_offset != file_size:
        layout.append(f"file size {file_size} != {reader.data_offset + expected_offset}")
    with open(path, "rb") as f:
        raw = f.read()
    for t in reader.tensors:  # padding after each tensor must be zeros
        end = t.data_offset + t.n_bytes
        pad_end = reader.data_offset + (end - reader.data_offset + alignment - 1) // alignment * alignment
        if any(raw[end:pad_end]):
            layout.append(f"{t.name}: non-zero padding")

    # Data against the HF checkpoint.
    data = []
    compared = {}
    arch = meta["general.architecture"]
    file_type = meta["general.file_type"]
    if file_type not in BASE_TYPE:
        data.append(f"unexpected general.file_type {file_type}")
        file_type = 1
    quantized_file = BASE_TYPE[file_type] not in (Q.F32, Q.F16)
    if quantized_file and meta.get("general.quantization_version") != 2:
        data.append("quantized file without general.quantization_version = 2")
    n_layer = meta[f"{arch}.block_count"]
    tied = not any(t.name == "output.weight" for t in reader.tensors)
    sources = hf_tensors(hf_dir)
    by_gguf = {}
    for hf, file in sources.items():
        if hf.endswith("rotary_emb.inv_freq"):
            continue
        if hf == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue
        name = gguf_name(hf)
        if name is None:
            data.append(f"no GGUF name for {hf}")
            continue
        by_gguf[name] = (file, hf)
    present = {t.name for t in reader.tensors}
    for name in sorted(set(by_gguf) - present):
        data.append(f"{name} ({by_gguf[name][1]}) missing from the GGUF")
    for t in reader.tensors:
        ne = [int(d) for d in t.shape]
        want_type = expected_type(t.name, ne, file_type, n_layer, tied)
        if t.tensor_type != want_type:
            data.append(f"{t.name}: type {t.tensor_type.name}, expected {want_type.name}")
        if t.tensor_type in REL_BOUND:
            got = dequantize(np.array(t.data), t.tensor_type).astype(np.float64)
        else:
            got = np.array(t.data).astype(np.float64)
        if t.name == "rope_freqs.weight":
            want = llama3_rope_freqs(config, meta[f"{arch}.rope.dimension_count"])
            err = float(np.max(np.abs(got - want) / want))
            compared[t.name] = err
            if got.shape != want.shape or err > 1e-6:
                data.append(f"rope_freqs differ (max rel {err})")
            continue
        if t.name not in by_gguf:
            data.append(f"{t.name}: no HF tensor")
            continue
        file, hf = by_gguf[t.name]
        original = load_hf(file, hf)
        heads = 0
        if arch == "llama" and (".attn_q." in t.name or ".attn_k." in t.name):
            heads = meta["llama.attention.head_count" if ".attn_q." in t.name
                         else "llama.attention.head_count_kv"]
            got = unpermute(got, heads)
        if got.shape != original.shape:
            data.append(f"{t.name}: shape {got.shape} != {original.shape}")
            continue
        want = original.astype(np.float64)
        if t.tensor_type == GGMLQuantizationType.F16:
            want = original.astype(np.float16).astype(np.float64)
        if t.tensor_type in REL_BOUND:
            # Blocks run along rows of the GGUF (permuted) layout.
            layout_want = permute(want, heads) if heads else want
            layout_got = permute(got, heads) if heads else got
            err = block_relative_error(layout_got, layout_want, GGML_QUANT_SIZES[t.tensor_type][0])
            compared[t.name] = err
            if err > REL_BOUND[t.tensor_type]:
                data.append(f"{t.name}: block-relative error {err} > {REL_BOUND[t.tensor_type]}")
            if t.tensor_type in REQUANTIZE:
                requantized = quantize(layout_want.astype(np.float32), t.tensor_type)
                if not np.array_equal(requantized.reshape(-1), np.array(t.data).reshape(-1)):
                    data.append(f"{t.name}: bytes differ from gguf-py's quantize")
            continue
        err = float(np.max(np.abs(got - want))) if got.size else 0.0
        compared[t.name] = err
        if err != 0.0:
            data.append(f"{t.name}: max |diff| {err}")

    tokenizer = []
    check_tokenizer(reader, hf_dir, tokenizer)

    checks = {"layout": layout, "data": data, "tokenizer": tokenizer}
    print(json.dumps({
        "version": header["GGUF.version"], "tensor_count": header["GGUF.tensor_count"],
        "kv_count": header["GGUF.kv_count"], "alignment": alignment,
        "data_offset": reader.data_offset, "file_size": file_size,
        "metadata": metadata, "tensors": tensors, "checks": checks, "compared": compared,
    }, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    sys.exit(1 if any(checks.values()) else 0)


if __name__ == "__main__":
    main()
