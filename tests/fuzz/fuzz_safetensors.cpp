// libFuzzer target: one safetensors file (header JSON, offsets, dtypes, data) through the reader
// the loaders use, then every tensor it accepted is read end to end.
#include "formats/safetensors/safetensors.h"
#include "tests/fuzz/fuzz_support.h"

#include <ATen/ATen.h>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = qtrain::fuzz::write_scratch("model.safetensors", data, size);
  qtrain::fuzz::expect_success_or_error([&] {
    const auto file = qtrain::SafetensorsFile::open(path);
    for (const std::string& name : file->names()) {
      const qtrain::TensorInfo& info = file->info(name);
      const uint8_t* bytes = file->data(name);
      uint64_t checksum = 0;
      for (uint64_t i = info.begin; i < info.end; ++i) checksum += bytes[i - info.begin];
      const at::Tensor tensor = file->tensor(name);
      if (static_cast<uint64_t>(tensor.nbytes()) != info.end - info.begin) {
        qtrain::fuzz::property_failed("tensor bytes differ from data_offsets for " + name);
      }
      (void)checksum;
    }
  });
  return 0;
}
