// libFuzzer target: one GGUF file through GgufReader (header, metadata, tensor table), then every
// tensor it accepted is read, as values where the type allows.
#include "formats/gguf/gguf_reader.h"
#include "tests/fuzz/fuzz_support.h"

#include <ATen/ATen.h>

namespace {

void check_array_types(const qtrain::GgufValue& value, const std::string& key) {
  for (const qtrain::GgufValue& item : value.items) {
    if (item.type != value.elem_type) {
      qtrain::fuzz::property_failed("array element of another type in " + key);
    }
    check_array_types(item, key);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = qtrain::fuzz::write_scratch("model.gguf", data, size);
  qtrain::fuzz::expect_success_or_error([&] {
    const qtrain::GgufReader reader = qtrain::GgufReader::open(path);
    for (const auto& [key, value] : reader.metadata()) check_array_types(value, key);
    for (const qtrain::GgufTensorInfo& t : reader.tensors()) {
      // An empty tensor needs no data: gguf-py and llama.cpp accept one even where the file
      // ends before the aligned start of the data section.
      if (t.nbytes > 0 && reader.data_offset() + t.offset + t.nbytes > size) {
        qtrain::fuzz::property_failed("tensor " + t.name + " accepted past the end of the file");
      }
      if (reader.read_bytes(t.name).size() != t.nbytes) {
        qtrain::fuzz::property_failed("read_bytes size differs for " + t.name);
      }
      if (t.type == qtrain::GgmlType::kF32 || t.type == qtrain::GgmlType::kF16 ||
          t.type == qtrain::GgmlType::kBF16) {
        if (static_cast<uint64_t>(reader.read_tensor(t.name).nbytes()) != t.nbytes) {
          qtrain::fuzz::property_failed("read_tensor size differs for " + t.name);
        }
      }
    }
  });
  return 0;
}
