"""Runs GGUF files in llama.cpp (llama-cpp-python) for qtrain's GGUF interop tests.

usage:
  llama_cpp_logits.py check
      exits 3 when llama_cpp cannot be imported, else prints {"version"}.
  llama_cpp_logits.py eval GGUF IDS_JSON
      evaluates the token ids (a JSON list) in one batch (n_ctx = len(ids), KV cache in F32) and
      prints {"n_vocab", "logits": [[...] per position], "nll": mean -log p(ids[i+1] | ids[..i]),
              "ppl": exp(nll)}.
  llama_cpp_logits.py quantize SRC DST FTYPE
      llama_model_quantize(SRC, DST) with llama_ftype FTYPE (7 Q8_0, 2 Q4_0, 15 Q4_K_M), then
      prints {"tensors": {name: {"type", "n_bytes"}}}.
  llama_cpp_logits.py compare A B
      tensor by tensor with gguf-py: {"tensors": {name: {"type_a", "type_b", "bytes_equal",
      "max_abs_diff" (of the dequantized values)}}, "only_a": [...], "only_b": [...]}
  llama_cpp_logits.py tokenize GGUF TEXTS_JSON
      llama.cpp's ids for each text (no BOS, special tokens parsed): {"ids": [[...], ...]}.
exit 3: llama_cpp is not installed.
"""
import ctypes
import json
import sys

import numpy as np


def load_llama_cpp():
    try:
        import llama_cpp
    except ImportError as e:
        print(f"llama_cpp not importable: {e}", file=sys.stderr)
        sys.exit(3)
    return llama_cpp


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def evaluate(path, ids):
    llama_cpp = load_llama_cpp()
    llm = llama_cpp.Llama(model_path=path, n_ctx=len(ids), n_batch=len(ids), n_ubatch=len(ids),
                          logits_all=True, verbose=False, n_threads=2, seed=0,
                          type_k=0, type_v=0)  # GGML_TYPE_F32 KV cache
    llm.eval(ids)
    logits = np.array(llm.scores[:len(ids)], dtype=np.float32)
    lp = log_softmax(logits[:-1])
    nll = float(-lp[np.arange(len(ids) - 1), ids[1:]].mean())
    return {"n_vocab": int(logits.shape[1]), "logits": logits.tolist(), "nll": nll,
            "ppl": float(np.exp(nll))}


def tensors_of(path):
    from gguf import GGUFReader
    return {t.name: t for t in GGUFReader(path).tensors}


def quantize_file(src, dst, ftype):
    llama_cpp = load_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed: {rc}")
    return {"tensors": {n: {"type": t.tensor_type.name, "n_bytes": int(t.n_bytes)}
                        for n, t in tensors_of(dst).items()}}


def compare(a_path, b_path):
    from gguf.quants import dequantize
    a, b = tensors_of(a_path), tensors_of(b_path)
    out = {"tensors": {}, "only_a": sorted(set(a) - set(b)), "only_b": sorted(set(b) - set(a))}
    for name in sorted(set(a) & set(b)):
        ta, tb = a[name], b[name]
        ra, rb = np.array(ta.data), np.array(tb.data)
        da = dequantize(ra, ta.tensor_type).astype(np.float64)
        db = dequantize(rb, tb.tensor_type).astype(np.float64)
        out["tensors"][name] = {
            "type_a": ta.tensor_type.name, "type_b": tb.tensor_type.name,
            "bytes_equal": ta.tensor_type == tb.tensor_type and ra.tobytes() == rb.tobytes(),
            "max_abs_diff": float(np.abs(da - db).max()) if da.shape == db.shape else None,
        }
    return out


def tokenize(path, texts):
    llama_cpp = load_llama_cpp()
    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    return {"ids": [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]}


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "check":
        result = {"version": load_llama_cpp().__version__}
    elif cmd == "eval" and len(sys.argv) == 4:
        result = evaluate(sys.argv[2], json.loads(open(sys.argv[3]).read()))
    elif cmd == "quantize" and len(sys.argv) == 5:
        result = quantize_file(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif cmd == "compare" and len(sys.argv) == 4:
        result = compare(sys.argv[2], sys.argv[3])
    elif cmd == "tokenize" and len(sys.argv) == 4:
        result = tokenize(sys.argv[2], json.loads(open(sys.argv[3], encoding="utf-8").read()))
    else:
        raise SystemExit(__doc__)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
