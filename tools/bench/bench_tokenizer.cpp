// Tokenizer throughput on one thread: encode (bytes/s of UTF-8 text and tokens/s) of the
// tokenizer.json byte-level BPE and of SentencePiece, and BPE decode, on an 8 MiB generated corpus
// of 4 KiB documents (license paragraphs with numbers, code, CJK, Cyrillic and emoji mixed in).
//
//   QTRAIN_BENCH_TOKENIZER_DIR=DIR build/tools/bench/bench_tokenizer [--benchmark_filter=...]
//
// DIR holds a tokenizer.json (and tokenizer_config.json), e.g. a Llama 3 or Qwen2 model directory,
// or one written by tests/reference/bpe_reference.py:
//   python tests/reference/bpe_reference.py train llama3 /tmp/bpe-llama3          (vocab 2000)
//   python tests/reference/bpe_reference.py from-gguf llama3
//       .../vendor/llama.cpp/models/ggml-vocab-llama-bpe.gguf /tmp/bpe-real-llama3   (the real one)
// QTRAIN_BENCH_SENTENCEPIECE names a tokenizer.model (or its directory); without it a 4000-piece
// model is trained on the license texts first.
//
// Measured on the 2-core CI container (RelWithDebInfo, one thread, another build running):
//   BPE, real Llama 3 vocabulary (128k):  encode ~21-24 MiB/s, ~5 M tokens/s (4.5 bytes/token);
//                                         with an empty word cache ~20 MiB/s; decode ~65 MiB/s
//   BPE, real Qwen2 vocabulary (152k, NFC): encode ~15-17 MiB/s, ~3.6 M tokens/s
//   SentencePiece, 4000 pieces:           encode ~2.5 MiB/s, ~0.7 M tokens/s
// For scale, tokenizers 0.23.3's Tokenizer.encode from Python, one thread, the same kind of
// corpus and the Llama 3 vocabulary: 1.7 MiB/s.
#include "data/sentencepiece_trainer.h"
#include "data/tokenizer.h"
#include "models/tiny_model.h"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>

namespace qtrain {
namespace {

namespace fs = std::filesystem;

const std::vector<std::string>& corpus() {
  static const std::vector<std::string> documents = [] {
    std::vector<std::string> paragraphs;
    for (const auto& path : default_tokenizer_corpus()) {
      std::ifstream in(path);
      std::stringstream text;
      text << in.rdbuf();
      const std::string all = text.str();
      for (size_t start = 0; start < all.size();) {
        size_t end = all.find("\n\n", start);
        if (end == std::string::npos) end = all.size();
        if (end > start) paragraphs.push_back(all.substr(start, end - start));
        start = end + 2;
      }
    }
    const std::vector<std::string> extras = {
        "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3067\u3059\u3002",
        "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0421\u043f\u0430\u0441\u0438"
        "\u0431\u043e.",
        "emoji \U0001F642\U0001F680 \U0001F468\u200d\U0001F469\u200d\U0001F467",
        "    for (int i = 0; i < n; ++i) {\n        total += x[i] * 2;\n    }\n",
        "def f(x):\n\treturn {'key': x, \"value\": [1, 2, 3]}\n",
        "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber Stra\u00dfe"};
    std::mt19937 rng(0);
    std::vector<std::string> docs;
    size_t total = 0;
    while (total < (8u << 20)) {
      std::string& doc = docs.emplace_back();
      while (doc.size() < 4096) {
        doc += paragraphs[rng() % paragraphs.size()] + "\n\n";
        if (rng() % 3 == 0) {
          doc += extras[rng() % extras.size()] + " " + std::to_string(rng() % 1000000) + "\n";
        }
      }
      total += doc.size();
    }
    return docs;
  }();
  return documents;
}

size_t corpus_bytes() {
  size_t bytes = 0;
  for (const auto& doc : corpus()) bytes += doc.size();
  return bytes;
}

std::unique_ptr<Tokenizer> bpe() {
  const char* dir = std::getenv("QTRAIN_BENCH_TOKENIZER_DIR");
  if (!dir || !*dir) return nullptr;
  return load_tokenizer(dir);
}

std::unique_ptr<Tokenizer> sentencepiece() {
  if (const char* path = std::getenv("QTRAIN_BENCH_SENTENCEPIECE"); path && *path) {
    return load_tokenizer(path);
  }
  const fs::path dir = fs::temp_directory_path() / "qtrain-bench-tokenizer";
  fs::create_directories(dir);
  SentencePieceTrainOptions options;
  options.hard_vocab_limit = false;
  const std::string model = train_sentencepiece(default_tokenizer_corpus(), 4000,
                                                (dir / "tokenizer.model").string(), options);
  auto tokenizer = load_tokenizer(model);
  fs::remove_all(dir);
  return tokenizer;
}

void encode_all(benchmark::State& state, const Tokenizer& tokenizer) {
  const auto& docs = corpus();
  int64_t tokens = 0;
  for (const auto& doc : docs) tokens += tokenizer.encode(doc, false, false).size();  // warm up
  for (auto _ : state) {
    for (const auto& doc : docs) benchmark::DoNotOptimize(tokenizer.encode(doc, false, false));
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(corpus_bytes()));
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(tokens * state.iterations()),
                                                  benchmark::Counter::kIsRate);
  state.counters["bytes/token"] = static_cast<double>(corpus_bytes()) / tokens;
  state.counters["vocab"] = static_cast<double>(tokenizer.vocab_size());
}

void BM_BpeEncode(benchmark::State& state) {
  const auto tokenizer = bpe();
  if (!tokenizer) {
    state.SkipWithError("set QTRAIN_BENCH_TOKENIZER_DIR to a directory with a tokenizer.json");
    return;
  }
  encode_all(state, *tokenizer);
}

// The same with an empty word cache: every distinct word merged once per pass.
void BM_BpeEncodeColdCache(benchmark::State& state) {
  if (!bpe()) {
    state.SkipWithError("set QTRAIN_BENCH_TOKENIZER_DIR to a directory with a tokenizer.json");
    return;
  }
  const auto& docs = corpus();
  for (auto _ : state) {
    state.PauseTiming();
    const auto tokenizer = bpe();
    state.ResumeTiming();
    for (const auto& doc : docs) benchmark::DoNotOptimize(tokenizer->encode(doc, false, false));
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(corpus_bytes()));
}

void BM_SentencePieceEncode(benchmark::State& state) {
  const auto tokenizer = sentencepiece();
  encode_all(state, *tokenizer);
}

void BM_BpeDecode(benchmark::State& state) {
  const auto tokenizer = bpe();
  if (!tokenizer) {
    state.SkipWithError("set QTRAIN_BENCH_TOKENIZER_DIR to a directory with a tokenizer.json");
    return;
  }
  std::vector<std::vector<int64_t>> ids;
  int64_t tokens = 0;
  for (const auto& doc : corpus()) {
    ids.push_back(tokenizer->encode(doc, false, false));
    tokens += ids.back().size();
  }
  for (auto _ : state) {
    for (const auto& doc_ids : ids) benchmark::DoNotOptimize(tokenizer->decode(doc_ids));
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(corpus_bytes()));
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(tokens * state.iterations()),
                                                  benchmark::Counter::kIsRate);
}

BENCHMARK(BM_BpeEncode)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_BpeEncodeColdCache)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK(BM_SentencePieceEncode)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_BpeDecode)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace qtrain

BENCHMARK_MAIN();
