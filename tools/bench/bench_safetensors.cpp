// Opening safetensors headers with very many tensors: SafetensorsFile::open on a file of N
// zero-size tensors (header parse, entry checks, tiling, name lookup), and CheckpointReader over
// an index whose weight_map spreads N such tensors over 4 shards. Time is per open; the files are
// written once per size, outside the timing.
//
//   build/tools/bench/bench_safetensors [--benchmark_filter=Open/1000000]
//
// Measured on the 2-core CI container (Release, one thread; CPU time, as builds ran beside it):
//                        10k        100k        1M
//   Open       before    0.51 s     304 s       (not run)
//              after     17 ms      183 ms      2.0 s
//   OpenIndex  before    0.12 s
//              after     30 ms      339 ms      4.1 s
// Before: nlohmann's parser callback, whose DOM builder rescans the whole root object each time
// an entry closes (quadratic); after: a SAX handler that checks entry by entry. For scale, the
// Python safetensors 0.8 package opens 1M zero-size tensors in about 3.5 s.
#include "formats/safetensors/safetensors.h"

#include <benchmark/benchmark.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

namespace qtrain {
namespace {

namespace fs = std::filesystem;

std::string scratch_dir() {
  static const std::string dir = [] {
    std::string pattern = (fs::temp_directory_path() / "qtrain-bench-st-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) std::abort();
    return pattern;
  }();
  return dir;
}

struct RemoveScratch {
  ~RemoveScratch() {
    std::error_code ec;
    fs::remove_all(scratch_dir(), ec);
  }
} remove_scratch_at_exit;

std::string tensor_name(int64_t i) {
  std::string digits = std::to_string(i);
  return "layer." + std::string(8 - std::min<size_t>(8, digits.size()), '0') + digits + ".weight";
}

// Zero-size F32 tensors named from `first` to `first + count - 1`, all at data offset 0.
void write_zero_size_file(const std::string& path, int64_t first, int64_t count) {
  std::string header = "{\"__metadata__\":{\"format\":\"pt\"}";
  header.reserve(static_cast<size_t>(count) * 64 + 64);
  for (int64_t i = first; i < first + count; ++i) {
    header +=
        ",\"" + tensor_name(i) + "\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}";
  }
  header += "}";
  const uint64_t length = header.size();
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&length), 8);
  out << header;
}

const std::string& zero_size_file(int64_t count) {
  static std::map<int64_t, std::string> files;
  auto it = files.find(count);
  if (it != files.end()) return it->second;
  const std::string path = scratch_dir() + "/zero-" + std::to_string(count) + ".safetensors";
  write_zero_size_file(path, 0, count);
  return files.emplace(count, path).first->second;
}

// model.safetensors.index.json over 4 shards of count / 4 zero-size tensors each.
const std::string& sharded_checkpoint(int64_t count) {
  static std::map<int64_t, std::string> dirs;
  auto it = dirs.find(count);
  if (it != dirs.end()) return it->second;
  const std::string dir = scratch_dir() + "/sharded-" + std::to_string(count);
  fs::create_directories(dir);
  constexpr int kShards = 4;
  std::string weight_map;
  for (int shard = 0; shard < kShards; ++shard) {
    const std::string name = "model-0000" + std::to_string(shard + 1) + "-of-00004.safetensors";
    const int64_t first = count / kShards * shard;
    const int64_t n = shard + 1 == kShards ? count - first : count / kShards;
    write_zero_size_file(dir + "/" + name, first, n);
    for (int64_t i = first; i < first + n; ++i) {
      weight_map += (weight_map.empty() ? "\"" : ",\"") + tensor_name(i) + "\":\"" + name + "\"";
    }
  }
  std::ofstream(dir + "/model.safetensors.index.json")
      << "{\"metadata\":{\"total_size\":0},\"weight_map\":{" << weight_map << "}}";
  return dirs.emplace(count, dir).first->second;
}

void BM_OpenZeroSizeTensors(benchmark::State& state) {
  const std::string& path = zero_size_file(state.range(0));
  for (auto _ : state) {
    auto file = SafetensorsFile::open(path);
    benchmark::DoNotOptimize(file->names().size());
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
  state.counters["header_MB"] = static_cast<double>(fs::file_size(path)) / 1e6;
}
BENCHMARK(BM_OpenZeroSizeTensors)
    ->Name("Open")
    ->Arg(10'000)
    ->Arg(100'000)
    ->Arg(1'000'000)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_OpenShardedIndex(benchmark::State& state) {
  const std::string& dir = sharded_checkpoint(state.range(0));
  for (auto _ : state) {
    CheckpointReader reader = CheckpointReader::open_dir(dir);
    benchmark::DoNotOptimize(reader.contains(tensor_name(0)));
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_OpenShardedIndex)
    ->Name("OpenIndex")
    ->Arg(10'000)
    ->Arg(100'000)
    ->Arg(1'000'000)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace qtrain

BENCHMARK_MAIN();
