"""Lists a GGUF file as PyPI's `gguf` package reads it, for qtrain's GgufReader test.

usage: gguf_listing.py GGUF_PATH
prints JSON: {"version", "tensor_count", "kv_count", "alignment", "data_offset", "file_size",
  "metadata": [{"key", "type", "value"}]   (arrays: type "ARRAY[<elem>]", value
                                            {"count", "head": first 8, "tail": last 4}),
  "tensors": [{"name", "ne", "type", "offset" (relative to the data), "n_bytes"}]}
"""
import json
import os
import sys

from gguf import GGUFReader

from read_gguf import field_json


def main():
    path = sys.argv[1]
    reader = GGUFReader(path)
    metadata = []
    for field in reader.fields.values():
        if field.name.startswith("GGUF."):
            continue
        typ, value = field_json(field)
        metadata.append({"key": field.name, "type": typ, "value": value})
    alignment = next((m["value"] for m in metadata if m["key"] == "general.alignment"), 32)
    tensors = [{"name": t.name, "ne": [int(d) for d in t.shape], "type": t.tensor_type.name,
                "offset": int(t.data_offset - reader.data_offset), "n_bytes": int(t.n_bytes)}
               for t in reader.tensors]
    print(json.dumps({
        "version": int(reader.get_field("GGUF.version").contents()),
        "tensor_count": len(reader.tensors),
        "kv_count": len(metadata),
        "alignment": alignment,
        "data_offset": int(reader.data_offset),
        "file_size": os.path.getsize(path),
        "metadata": metadata,
        "tensors": tensors,
    }))


if __name__ == "__main__":
    main()
