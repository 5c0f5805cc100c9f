"""Rewrites a GGUF file with every tensor dequantized to F32 by gguf-py (the reference
dequantizer), metadata copied as it is: llama.cpp then runs the very weights the source file
holds, without its quantized kernels (which round the activations to 8 bits).

usage: gguf_to_f32.py SRC DST    prints {"tensors": n, "converted": {type: count}}
"""
import json
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize


def main():
    src, dst = sys.argv[1], sys.argv[2]
    reader = GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(dst, arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        main_type = field.types[0]
        sub_type = field.types[-1] if main_type == GGUFValueType.ARRAY else None
        if field.name == "general.file_type":
            writer.add_key_value(field.name, 0, main_type)  # ALL_F32
            continue
        writer.add_key_value(field.name, field.contents(), main_type, sub_type)
    converted = {}
    for t in reader.tensors:
        values = dequantize(np.array(t.data), t.tensor_type).astype(np.float32)
        shape = [int(n) for n in reversed(t.shape.tolist())]  # numpy order: ne reversed
        writer.add_tensor(t.name, values.reshape(shape), raw_dtype=GGMLQuantizationType.F32)
        converted[t.tensor_type.name] = converted.get(t.tensor_type.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(json.dumps({"tensors": len(reader.tensors), "converted": converted}))


if __name__ == "__main__":
    main()
