// What the strict JSON reader (core/json_file.h: depth limit and duplicate-key refusal while
// parsing) costs against nlohmann::json::parse, on a generated tokenizer.json of the Llama 3 size
// (128k vocabulary entries, 128k merges as string pairs, ~5.6 MB) and on one small config.json.
//
//   build/tools/bench/bench_json [--benchmark_filter=...]
//
// Measured (Release, the 2-core container with other builds and tests running, so CPU time,
// median of 5):
//   BM_TokenizerJson/nlohmann        77 ms  (73 MB/s)
//   BM_TokenizerJson/parse_json_text 77 ms  (73 MB/s; 94 ms when it built each value's path
//                                    segment and looked every key up twice)
//   BM_ConfigJson/nlohmann           5.0 us
//   BM_ConfigJson/parse_json_text    4.7 us
#include "core/json_file.h"

#include <benchmark/benchmark.h>
#include <nlohmann/json.hpp>

#include <string>

namespace {

using nlohmann::json;

std::string token(int i) {
  // Byte-level BPE pieces: short ASCII-ish strings with the Ġ space marker.
  std::string text = (i % 3 == 0 ? "\u0120" : "") + std::to_string(i * 7919);
  for (char& c : text) {
    if (c >= '0' && c <= '9') c = static_cast<char>('a' + (c - '0'));
  }
  return text;
}

std::string tokenizer_json_text() {
  constexpr int kVocab = 128'000;
  json vocab = json::object();
  json merges = json::array();
  for (int i = 0; i < kVocab; ++i) {
    vocab[token(i)] = i;
    merges.push_back(json::array({token(i), token(i + 1)}));
  }
  const json root = {{"version", "1.0"},
                     {"added_tokens", json::array()},
                     {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
  return root.dump();
}

std::string config_json_text() {
  return R"({"architectures": ["LlamaForCausalLM"], "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu", "hidden_size": 4096,
    "intermediate_size": 14336, "max_position_embeddings": 131072, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0,
    "low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
    "vocab_size": 128256})";
}

template <bool kStrict>
void parse(benchmark::State& state, const std::string& text) {
  for (auto _ : state) {
    json value = kStrict ? qtrain::parse_json_text(text, "bench.json") : json::parse(text);
    benchmark::DoNotOptimize(value);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) *
                          static_cast<int64_t>(text.size()));
}

void BM_TokenizerJsonNlohmann(benchmark::State& state) {
  static const std::string text = tokenizer_json_text();
  parse<false>(state, text);
}
void BM_TokenizerJsonStrict(benchmark::State& state) {
  static const std::string text = tokenizer_json_text();
  parse<true>(state, text);
}
void BM_ConfigJsonNlohmann(benchmark::State& state) {
  parse<false>(state, config_json_text());
}
void BM_ConfigJsonStrict(benchmark::State& state) {
  parse<true>(state, config_json_text());
}

BENCHMARK(BM_TokenizerJsonNlohmann)
    ->Name("BM_TokenizerJson/nlohmann")
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_TokenizerJsonStrict)
    ->Name("BM_TokenizerJson/parse_json_text")
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ConfigJsonNlohmann)->Name("BM_ConfigJson/nlohmann")->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_ConfigJsonStrict)
    ->Name("BM_ConfigJson/parse_json_text")
    ->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
