"""Interop check of qtrain's safetensors I/O against the reference `safetensors` package.

    safetensors_roundtrip.py check FILE          verify a file qtrain wrote
    safetensors_roundtrip.py check_sharded DIR   verify a sharded checkpoint qtrain wrote
    safetensors_roundtrip.py write FILE          write the expected tensors for qtrain to read

The expected tensors are defined by `expected()` and mirrored in
tests/formats/test_safetensors_interop.cpp; both build them from arange so no data file is needed.
"""

import json
import struct
import sys

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

METADATA = {"format": "pt", "producer": "qtrain-test", "unicode": "h\u00e9llo \u2713"}


def expected():
    k = np.arange(12, dtype=np.int64)
    numpy_values = {
        "BOOL": k % 3 == 0,
        "U8": (k * 20 + 7).astype(np.uint8),
        "I8": (k * 10 - 60).astype(np.int8),
        "I16": (k * 3000 - 16000).astype(np.int16),
        "U16": (k * 5000 + 3).astype(np.uint16),
        "I32": (k * 100_000_000 - 600_000_000).astype(np.int32),
        "U32": (k * 300_000_000 + 1).astype(np.uint32),
        "I64": k * 1_000_000_000_000 - 5_000_000_000_000,
        "U64": k.astype(np.uint64) * np.uint64(1_500_000_000_000_000_000) + np.uint64(5),
        "F16": (k * 0.125 - 0.75).astype(np.float16),
        "F32": k.astype(np.float32) / np.float32(3),
        "F64": k.astype(np.float64) / 3.0 - 1.0,
    }
    tensors = {f"t_{name}": torch.from_numpy(v.reshape(3, 4).copy()) for name, v in numpy_values.items()}
    tensors["t_BF16"] = torch.from_numpy((k * 0.25 - 1.5).astype(np.float32)).to(torch.bfloat16).reshape(3, 4)
    tensors["scalar_F32"] = torch.tensor(3.5, dtype=torch.float32)
    tensors["empty_I32"] = torch.zeros((0, 3), dtype=torch.int32)
    return tensors


def raw(t):
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def compare(name, actual, want):
    if actual.dtype != want.dtype:
        sys.exit(f"{name}: dtype {actual.dtype}, expected {want.dtype}")
    if tuple(actual.shape) != tuple(want.shape):
        sys.exit(f"{name}: shape {tuple(actual.shape)}, expected {tuple(want.shape)}")
    if raw(actual) != raw(want):
        sys.exit(f"{name}: values differ:\n{actual}\nexpected\n{want}")


def check_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        text = f.read(n).decode("utf-8")
    if n % 8:
        sys.exit(f"{path}: header length {n} is not a multiple of 8")
    pairs = json.loads(text, object_pairs_hook=lambda p: p)
    if pairs[0][0] != "__metadata__":
        sys.exit(f"{path}: __metadata__ is not the first key")
    if text.rstrip(" ") != json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False):
        sys.exit(f"{path}: header is not compact JSON")


def check(path):
    check_header(path)
    want = expected()
    with safe_open(path, framework="pt") as f:
        if f.metadata() != METADATA:
            sys.exit(f"metadata {f.metadata()}, expected {METADATA}")
        if sorted(f.keys()) != sorted(want):
            sys.exit(f"keys {sorted(f.keys())}, expected {sorted(want)}")
        for name in f.keys():
            compare(name, f.get_tensor(name), want[name])


def check_sharded(directory):
    want = expected()
    with open(f"{directory}/model.safetensors.index.json") as f:
        index = json.load(f)
    weight_map = index["weight_map"]
    if sorted(weight_map) != sorted(want):
        sys.exit(f"weight_map keys {sorted(weight_map)}, expected {sorted(want)}")
    total = sum(t.numel() * t.element_size() for t in want.values())
    if index["metadata"]["total_size"] != total:
        sys.exit(f"total_size {index['metadata']['total_size']}, expected {total}")
    shards = sorted(set(weight_map.values()))
    if len(shards) < 2:
        sys.exit("expected several shards")
    for shard in shards:
        tensors = load_file(f"{directory}/{shard}")
        mapped = sorted(n for n, s in weight_map.items() if s == shard)
        if sorted(tensors) != mapped:
            sys.exit(f"{shard} holds {sorted(tensors)}, index maps {mapped}")
        for name, t in tensors.items():
            compare(name, t, want[name])


def write(path):
    save_file(expected(), path, metadata=METADATA)


if __name__ == "__main__":
    mode, target = sys.argv[1], sys.argv[2]
    {"check": check, "check_sharded": check_sharded, "write": write}[mode](target)
    print("ok")
