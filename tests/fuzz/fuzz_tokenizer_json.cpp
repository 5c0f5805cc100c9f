// libFuzzer target: a tokenizer.json (byte-level BPE: model, merges, added tokens, normalizer,
// pre-tokenizer regexes). The input is the JSON text, optionally followed by a NUL byte and a
// text to encode; an accepted tokenizer encodes it (and a fixed sample) and decodes the ids.
#include "data/bpe_tokenizer.h"
#include "tests/fuzz/fuzz_support.h"

#include <cstring>

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
    }
  });
  return 0;
}
