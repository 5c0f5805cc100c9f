// libFuzzer target: a tokenizer.json (byte-level BPE: model, merges, added tokens, normalizer,
// pre-tokenizer regexes). The input is the JSON text, optionally followed by a NUL byte and a
// text to encode; an accepted tokenizer encodes it (and a fixed sample), decodes the ids and
// checks that the text cut at its atomic added tokens encodes to the same ids.
#include "data/bpe_tokenizer.h"
#include "tests/fuzz/fuzz_support.h"

#include <cstring>

// split_at_atomic_tokens must cover the text in order, and encoding its pieces must give the ids
// of the whole text (data/examples.cpp masks chat samples on that promise).
void check_atomic_split(const qtrain::BpeTokenizer& tokenizer, const std::string& text) {
  std::vector<int64_t> ids;
  size_t covered = 0;
  for (const auto& segment : tokenizer.split_at_atomic_tokens(text)) {
    if (segment.begin != covered || segment.end <= segment.begin) {
      qtrain::fuzz::property_failed("split_at_atomic_tokens leaves a gap or an empty segment");
    }
    covered = segment.end;
    if (segment.id >= 0) {
      ids.push_back(segment.id);
    } else {
      const auto part =
          tokenizer.encode(text.substr(segment.begin, segment.end - segment.begin), false, false);
      ids.insert(ids.end(), part.begin(), part.end());
    }
  }
  if (covered != text.size() || ids != tokenizer.encode(text, false, false)) {
    qtrain::fuzz::property_failed("encoding the atomic split differs from encoding the text");
  }
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const char* begin = reinterpret_cast<const char*>(data);
  const char* nul = static_cast<const char*>(std::memchr(begin, '\0', size));
  const std::string json(begin, nul != nullptr ? nul : begin + size);
  const std::string text = nul != nullptr ? std::string(nul + 1, begin + size) : "";
  qtrain::fuzz::expect_success_or_error([&] {
    const qtrain::BpeTokenizer tokenizer =
        qtrain::BpeTokenizer::from_json_text(json, "tokenizer.json");
    for (const std::string& sample :
         {std::string("Hello world! 123 h\xc3\xa9llo \n\t<|eot|>"), text}) {
      const std::vector<int64_t> ids = tokenizer.encode(sample, true, true);
      for (int64_t id : ids) {
        if (id < 0 || id >= tokenizer.vocab_size()) {
          qtrain::fuzz::property_failed("encode produced id " + std::to_string(id) +
                                        " outside the vocabulary");
        }
      }
      (void)tokenizer.decode(ids);
      check_atomic_split(tokenizer, sample);
    }
  });
  return 0;
}
