// libFuzzer target: model.safetensors.index.json beside two real shards (one in a subdirectory).
// Beyond "succeed or qtrain::Error", every shard the reader accepted must lie inside the
// checkpoint directory: an index must never reach files outside it.
#include "formats/safetensors/safetensors.h"
#include "tests/fuzz/fuzz_support.h"

#include <ATen/ATen.h>

#include <filesystem>

namespace {

const std::string& checkpoint_dir() {
  static const std::string dir = [] {
    const std::string root = qtrain::fuzz::scratch_dir() + "/checkpoint";
    std::filesystem::create_directories(root + "/sub");
    qtrain::write_safetensors(root + "/a.safetensors",
                              {{"x", at::ones({2, 3})}, {"y", at::zeros({4}, at::kBFloat16)}});
    qtrain::write_safetensors(root + "/sub/b.safetensors", {{"z", at::arange(5)}});
    return root;
  }();
  return dir;
}

bool inside(const std::string& dir, const std::string& path) {
  const auto base = std::filesystem::weakly_canonical(dir);
  const auto target = std::filesystem::weakly_canonical(path);
  const auto mismatch = std::mismatch(base.begin(), base.end(), target.begin(), target.end());
  return mismatch.first == base.end() && target != base;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = checkpoint_dir();
  const std::string index = dir + "/model.safetensors.index.json";
  {
    std::ofstream out(index, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  qtrain::fuzz::expect_success_or_error([&] {
    const auto reader = qtrain::CheckpointReader::open_dir(dir);
    for (const std::string& name : reader.names()) {
      if (!inside(dir, reader.file_of(name))) {
        qtrain::fuzz::property_failed("index reached outside the checkpoint: " +
                                      reader.file_of(name));
      }
      (void)reader.tensor(name).sum().item<double>();
    }
  });
  return 0;
}
