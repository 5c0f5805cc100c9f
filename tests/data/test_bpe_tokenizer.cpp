// Byte-level BPE from tokenizer.json: ids, decoding and pre-tokenization against Hugging Face
// tokenizers 0.23.3 (tests/reference/bpe_reference.py trains Llama 3-, Qwen2- and GPT-2-style
// tokenizers with its BpeTrainer and records what tokenizers gives for a varied corpus), the real
// Llama 3 and Qwen2 vocabularies when QTRAIN_LLAMA_CPP_VOCAB_DIR names a directory with
// llama.cpp's ggml-vocab-llama-bpe.gguf / ggml-vocab-qwen2.gguf (see the script's docstring),
// and a hand-written tokenizer.json for the loader, the merge rules and the errors.
#include "core/error.h"
#include "data/bpe_tokenizer.h"
#include "data/byte_level.h"
#include "data/pretokenize_regex.h"
#include "data/tokenizer.h"
#include "data/unicode_text.h"
#include "tests/support/test_support.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <thread>

namespace qtrain {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::ScratchDir;

// ---------------------------------------------------------------------------------------------
// Against tokenizers.

struct Reference {
  std::unique_ptr<ScratchDir> dir;
  json data;
  std::unique_ptr<Tokenizer> tokenizer;  // load_tokenizer(dir)
  std::string error;                     // why there is none
};

// Runs bpe_reference.py once per configuration ("train llama3", "from-gguf qwen2 PATH", ...).
const Reference& reference(const std::vector<std::string>& args) {
  static std::map<std::vector<std::string>, Reference> cache;
  const auto it = cache.find(args);
  if (it != cache.end()) return it->second;
  Reference& r = cache[args];
  r.dir = std::make_unique<ScratchDir>("qtrain-bpe");
  std::vector<std::string> script_args = args;
  script_args.push_back(r.dir->path());
  std::string output;
  if (testing::run_reference_script("bpe_reference.py", script_args, &output) != 0) {
    r.error = "bpe_reference.py failed:\n" + output.substr(0, 4000);
    return r;
  }
  r.data = json::parse(testing::read_file(r.dir->file("reference.json")));
  r.tokenizer = load_tokenizer(r.dir->path());
  return r;
}

class BpeAgainstTokenizers : public ::testing::TestWithParam<std::string> {
 protected:
  // The reference of this parameter, or nullptr after skipping / failing.
  const Reference* get() {
    std::vector<std::string> args;
    const std::string& kind = GetParam();
    if (kind.rfind("real-", 0) == 0) {
      const char* dir = std::getenv("QTRAIN_LLAMA_CPP_VOCAB_DIR");
      if (!dir || !*dir) return nullptr;  // SetUp skipped the test
      const std::string file =
          kind == "real-llama3" ? "ggml-vocab-llama-bpe.gguf" : "ggml-vocab-qwen2.gguf";
      args = {"from-gguf", kind.substr(5), std::string(dir) + "/" + file};
    } else {
      args = {"train", kind};
    }
    const Reference& r = reference(args);
    if (!r.tokenizer) {
      ADD_FAILURE() << r.error;
      return nullptr;
    }
    return &r;
  }
  void SetUp() override {
    if (GetParam().rfind("real-", 0) == 0) {
      const char* dir = std::getenv("QTRAIN_LLAMA_CPP_VOCAB_DIR");
      if (!dir || !*dir) GTEST_SKIP() << "QTRAIN_LLAMA_CPP_VOCAB_DIR is not set";
    }
    QTRAIN_REQUIRE_REFERENCE_PYTHON();
  }
};

TEST_P(BpeAgainstTokenizers, IdsMatch) {
  const Reference* r = get();
  if (!r) return;
  const auto& cases = r->data["cases"];
  size_t matched = 0;
  for (const auto& c : cases) {
    const std::string text = c["text"];
    const auto ids = r->tokenizer->encode(text, false, false);
    const auto expected = c["ids"].get<std::vector<int64_t>>();
    if (ids == expected) {
      ++matched;
    } else {
      ADD_FAILURE() << "ids differ for " << json(text).dump()
                    << "\n  qtrain:     " << json(ids).dump()
                    << "\n  tokenizers: " << json(expected).dump();
    }
  }
  std::cout << "[ " << GetParam() << " ] " << matched << " of " << cases.size()
            << " strings give tokenizers' ids\n";
  EXPECT_EQ(matched, cases.size());
  EXPECT_GT(cases.size(), 300u);
}

TEST_P(BpeAgainstTokenizers, SpecialTokensFollowTheFiles) {
  const Reference* r = get();
  if (!r) return;
  const Tokenizer& tok = *r->tokenizer;
  EXPECT_NE(dynamic_cast<const BpeTokenizer*>(&tok), nullptr);
  EXPECT_EQ(tok.vocab_size(), r->data["vocab_size"].get<int64_t>());
  EXPECT_EQ(tok.bos_id(), r->data["bos_id"].get<int64_t>());
  EXPECT_EQ(tok.eos_id(), r->data["eos_id"].get<int64_t>());
  EXPECT_EQ(tok.pad_id(), r->data["pad_id"].get<int64_t>());
  EXPECT_EQ(tok.add_bos_default(), r->data["add_bos"].get<bool>());
  EXPECT_EQ(tok.add_eos_default(), r->data["add_eos"].get<bool>());
  // add_special_tokens=True is the template: what the defaults add.
  for (const auto& c : r->data["cases"]) {
    const std::string text = c["text"];
    EXPECT_EQ(tok.encode(text, tok.add_bos_default(), tok.add_eos_default()),
              c["ids_special"].get<std::vector<int64_t>>())
        << json(text).dump();
  }
}

TEST_P(BpeAgainstTokenizers, DecodeMatches) {
  const Reference* r = get();
  if (!r) return;
  size_t roundtrips = 0;
  for (const auto& c : r->data["cases"]) {
    const std::string text = c["text"];
    const auto ids = c["ids"].get<std::vector<int64_t>>();
    const std::string decoded = r->tokenizer->decode(ids);
    EXPECT_EQ(decoded, c["decoded"].get<std::string>()) << json(text).dump();
    if (!c["roundtrip"].is_null()) {
      // decode(encode(x)) == x (NFC(x) with Qwen's normalizer).
      EXPECT_EQ(r->tokenizer->decode(r->tokenizer->encode(text, false, false)),
                c["roundtrip"].get<std::string>())
          << json(text).dump();
      ++roundtrips;
    }
  }
  if (GetParam() != "gpt2") {
    EXPECT_GT(roundtrips, 200u);
  }
}

// Every code point of planes 0-3 and 14 in a few contexts: the PCRE2 pre-tokenizer must cut
// where tokenizers' Oniguruma does (\s, \p{L}, \p{N}, case folding, look-ahead).
TEST_P(BpeAgainstTokenizers, PreTokenizerSweepMatches) {
  const Reference* r = get();
  if (!r) return;
  const auto& tok = dynamic_cast<const BpeTokenizer&>(*r->tokenizer);
  const auto& sweep = r->data["sweep"];
  if (sweep.is_null()) GTEST_SKIP() << "the llama3 sweep covers this pattern's classes";
  const auto templates = sweep["templates"].get<std::vector<std::string>>();
  size_t checked = 0, differing = 0;
  for (const auto& range : sweep["ranges"]) {
    const auto first = range[0].get<uint32_t>();
    const auto last = range[1].get<uint32_t>();
    const std::string expected = range[2];
    for (uint32_t cp = first; cp <= last; ++cp) {
      std::string c;
      append_utf8(cp, c);
      std::string signature;
      for (size_t t = 0; t < templates.size(); ++t) {
        std::string text;
        for (size_t pos = 0; pos < templates[t].size();) {
          if (templates[t].compare(pos, 3, "{c}") == 0) {
            text += c;
            pos += 3;
          } else {
            text += templates[t][pos++];
          }
        }
        if (t > 0) signature += "|";
        bool first_piece = true;
        for (const std::string& piece : tok.pre_tokenize(text)) {
          std::string bytes;
          ASSERT_TRUE(from_byte_level(piece, &bytes));
          signature += (first_piece ? "" : ",") + std::to_string(bytes.size());
          first_piece = false;
        }
      }
      ++checked;
      if (signature != expected && ++differing <= 20) {
        ADD_FAILURE() << "U+" << std::hex << cp << std::dec << ": qtrain " << signature
                      << ", tokenizers " << expected;
      }
    }
  }
  std::cout << "[ " << GetParam() << " ] " << checked - differing << " of " << checked
            << " code points pre-tokenize as in tokenizers\n";
  EXPECT_EQ(differing, 0u);
}

INSTANTIATE_TEST_SUITE_P(Trained, BpeAgainstTokenizers,
                         ::testing::Values("llama3", "qwen2", "gpt2"));
INSTANTIATE_TEST_SUITE_P(RealVocabulary, BpeAgainstTokenizers,
                         ::testing::Values("real-llama3", "real-qwen2"));

// ---------------------------------------------------------------------------------------------
// A hand-written tokenizer.json: the 256 byte-level characters as ids 0..255 (id == byte), a few
// merges, two added tokens.

json tiny_tokenizer_json() {
  json vocab = json::object();
  const auto& chars = byte_level_chars();
  for (int b = 0; b < 256; ++b) vocab[chars[b]] = b;
  vocab["he"] = 256;
  vocab["ll"] = 257;
  vocab["hell"] = 258;
  vocab["hello"] = 259;
  vocab["\xC4\xA0w"] = 260;  // "Ġw": " w"
  vocab["lo"] = 261;
  return {{"version", "1.0"},
          {"added_tokens",
           {{{"id", 262},
             {"content", "<|eot|>"},
             {"single_word", false},
             {"lstrip", false},
             {"rstrip", false},
             {"normalized", false},
             {"special", true}},
            {{"id", 263}, {"content", "<|begin|>"}, {"special", true}, {"normalized", false}}}},
          {"normalizer", nullptr},
          {"pre_tokenizer",
           {{"type", "Sequence"},
            {"pretokenizers",
             {{{"type", "Split"},
               {"pattern", {{"Regex", R"( ?\p{L}+| ?\p{N}|\s+(?!\S)|\s+|[^\s\p{L}\p{N}]+)"}}},
               {"behavior", "Isolated"},
               {"invert", false}},
              {{"type", "ByteLevel"},
               {"add_prefix_space", false},
               {"trim_offsets", true},
               {"use_regex", false}}}}}},
          {"post_processor",
           {{"type", "TemplateProcessing"},
            {"single",
             {{{"SpecialToken", {{"id", "<|begin|>"}, {"type_id", 0}}}},
              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
            {"pair", json::array()},
            {"special_tokens",
             {{"<|begin|>", {{"id", "<|begin|>"}, {"ids", {263}}, {"tokens", {"<|begin|>"}}}}}}}},
          {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}}},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr},
            {"fuse_unk", false},
            {"byte_fallback", false},
            {"ignore_merges", false},
            {"vocab", vocab},
            {"merges", {"h e", json::array({"l", "l"}), "he ll", "hell o", "\xC4\xA0 w", "l o"}}}}};
}

BpeTokenizer tiny(const json& j = tiny_tokenizer_json()) {
  return BpeTokenizer::from_json_text(j.dump(), "tiny/tokenizer.json");
}

TEST(BpeTiny, MergesByRankAndBothMergeForms) {
  const BpeTokenizer tok = tiny();
  EXPECT_EQ(tok.vocab_size(), 264);
  EXPECT_EQ(tok.encode("hello"), (std::vector<int64_t>{259}));
  // " world": "Ġw" then bytes; "lo" never forms since "o r l d" has no "l o".
  EXPECT_EQ(tok.encode("hello world"), (std::vector<int64_t>{259, 260, 'o', 'r', 'l', 'd'}));
  // "llo": "l l" (rank 1) before "l o" (rank 5).
  EXPECT_EQ(tok.encode("llo"), (std::vector<int64_t>{257, 'o'}));
  // "l o" twice: equal ranks merge leftmost first.
  EXPECT_EQ(tok.encode("lolo"), (std::vector<int64_t>{261, 261}));
  EXPECT_EQ(tok.decode(tok.encode("hello world")), "hello world");
}

TEST(BpeTiny, IgnoreMergesKeepsWholeWords) {
  json j = tiny_tokenizer_json();
  j["added_tokens"] = json::array();
  j["post_processor"] = nullptr;
  j["model"]["vocab"]["hel"] = 262;  // no merge builds it
  EXPECT_EQ(tiny(j).encode("hel"), (std::vector<int64_t>{256, 'l'}));
  j["model"]["ignore_merges"] = true;
  EXPECT_EQ(tiny(j).encode("hel"), (std::vector<int64_t>{262}));
  EXPECT_EQ(tiny(j).encode("hello"), (std::vector<int64_t>{259}));
}

TEST(BpeTiny, AddedTokensAreCutOutBeforePreTokenizing) {
  const BpeTokenizer tok = tiny();
  EXPECT_EQ(tok.encode("he<|eot|>llo"), (std::vector<int64_t>{256, 262, 257, 'o'}));
  EXPECT_EQ(tok.encode("<|eot|><|eot|>"), (std::vector<int64_t>{262, 262}));
  EXPECT_EQ(tok.encode("<|eot|"), (std::vector<int64_t>{'<', '|', 'e', 'o', 't', '|'}));
  EXPECT_TRUE(tok.is_special(262));
  EXPECT_FALSE(tok.is_special(259));
  EXPECT_EQ(tok.token_to_id("<|eot|>"), 262);
  EXPECT_EQ(tok.token_to_id("hello"), 259);
  EXPECT_EQ(tok.token_to_id("nope"), -1);
  EXPECT_EQ(tok.id_to_token(259), "hello");
  // Special tokens decode to nothing.
  EXPECT_EQ(tok.decode({263, 259, 262}), "hello");
}

TEST(BpeTiny, TemplateGivesBosAndItsDefault) {
  const BpeTokenizer tok = tiny();
  EXPECT_EQ(tok.bos_id(), 263);
  EXPECT_EQ(tok.eos_id(), -1);
  EXPECT_EQ(tok.pad_id(), -1);
  EXPECT_TRUE(tok.add_bos_default());
  EXPECT_FALSE(tok.add_eos_default());
  EXPECT_EQ(tok.encode("hello", true, true), (std::vector<int64_t>{263, 259}));

  json j = tiny_tokenizer_json();
  j["post_processor"] = {{"type", "ByteLevel"}, {"trim_offsets", false}};
  const BpeTokenizer plain = tiny(j);
  EXPECT_EQ(plain.bos_id(), -1);
  EXPECT_FALSE(plain.add_bos_default());
  EXPECT_EQ(plain.encode("hello", true, true), (std::vector<int64_t>{259}));

  // tokenizer_config.json names them (string or {"content": ...}); null means none.
  const BpeTokenizer configured = BpeTokenizer::from_json_text(
      j.dump(), "tokenizer.json",
      R"({"bos_token": {"content": "<|begin|>"}, "eos_token": "<|eot|>", "pad_token": null})",
      "tokenizer_config.json");
  EXPECT_EQ(configured.bos_id(), 263);
  EXPECT_EQ(configured.eos_id(), 262);
  EXPECT_EQ(configured.pad_id(), -1);
  EXPECT_FALSE(configured.add_bos_default());  // still the template's (none)
  EXPECT_EQ(configured.encode("hello", true, true), (std::vector<int64_t>{263, 259, 262}));
}

TEST(BpeTiny, DecodeReplacesBrokenUtf8LikeTokenizers) {
  const BpeTokenizer tok = tiny();
  // ids 0..255 are the bytes themselves.
  EXPECT_EQ(tok.decode({0xF0, 0x9F, 0x99, 0x82}), "\U0001F642");
  EXPECT_EQ(tok.decode({0xE2, 0x82, 'A'}), "\uFFFDA");  // one maximal subpart
  EXPECT_EQ(tok.decode({0xFF, 0xC0, 0x80}), "\uFFFD\uFFFD\uFFFD");
  EXPECT_EQ(tok.decode({0xED, 0xA0, 0x80}), "\uFFFD\uFFFD\uFFFD");  // a surrogate
  EXPECT_EQ(tok.decode({0xF4, 0x90}), "\uFFFD\uFFFD");
  EXPECT_EQ(tok.decode({}), "");
  EXPECT_THROW(tok.decode({264}), Error);
  EXPECT_THROW(tok.decode({-1}), Error);
}

TEST(BpeTiny, RejectsInvalidUtf8Text) {
  try {
    tiny().encode("ab\xFF");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFormat);
  }
}

TEST(BpeTiny, EncodesFromManyThreads) {
  const BpeTokenizer tok = tiny();
  std::string text;
  for (int i = 0; i < 200; ++i) text += "hello world llo lolo he<|eot|> " + std::to_string(i);
  const auto expected = tok.encode(text);
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) ok[t] += tok.encode(text) == expected;
    });
  }
  for (auto& thread : threads) thread.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(ok[t], 20);
}

TEST(BpeTiny, LongRunsDoNotOverflowTheRegex) {
  const BpeTokenizer tok = tiny();
  for (const std::string unit : {" ", "a", "1", "!", "\n"}) {
    std::string text;
    for (int i = 0; i < (1 << 20); ++i) text += unit;
    EXPECT_FALSE(tok.encode(text).empty());
  }
}

// Added tokens are matched leftmost-longest through a trie: many tokens sharing a prefix cost
// no more per position than the longest of them (issue 24: 20,000 such tokens made encoding a
// 10 MB text take over a minute, and loading them seconds; bench_tokenizer's BM_AddedTokens*).
TEST(BpeTiny, ManyAddedTokensSharingAPrefixMatchLeftmostLongest) {
  json j = tiny_tokenizer_json();
  for (int i = 0; i < 20000; ++i) {
    j["added_tokens"].push_back({{"id", 264 + i},
                                 {"content", "<|reserved_" + std::to_string(i) + "|>"},
                                 {"special", true},
                                 {"normalized", false}});
  }
  j["added_tokens"].push_back(
      {{"id", 20264}, {"content", "<|reserved_1"}, {"special", true}, {"normalized", false}});
  const BpeTokenizer tok = tiny(j);
  EXPECT_EQ(tok.encode("he<|reserved_19999|>llo"), (std::vector<int64_t>{256, 20263, 257, 'o'}));
  // At one position the longest token wins; the search goes on after it.
  EXPECT_EQ(tok.encode("<|reserved_12|>"), (std::vector<int64_t>{264 + 12}));
  EXPECT_EQ(tok.encode("<|reserved_12|"), (std::vector<int64_t>{20264, '2', '|'}));
  const std::string no_token = "<|reserved_20000|>";  // only prefixes of tokens start here
  EXPECT_EQ(tok.encode(no_token), std::vector<int64_t>(no_token.begin(), no_token.end()));
  EXPECT_EQ(tok.encode("<|reserved_<|reserved_7|>"),
            (std::vector<int64_t>{'<', '|', 'r', 'e', 's', 'e', 'r', 'v', 'e', 'd', '_', 271}));
  // Of two normalized tokens with the same NFC form, the first wins.
  json twice = tiny_tokenizer_json();
  twice["added_tokens"].push_back(
      {{"id", 264}, {"content", "h\u00e9"}, {"special", false}, {"normalized", true}});
  twice["added_tokens"].push_back(
      {{"id", 265}, {"content", "he\u0301"}, {"special", false}, {"normalized", true}});
  twice["normalizer"] = {{"type", "NFC"}};
  EXPECT_EQ(tiny(twice).encode("xh\u00e9he\u0301"), (std::vector<int64_t>{'x', 264, 264}));
}

// The o200k (GPT-4o) / Llama 4 pattern's classes take the marks of Unicode 15-16 as tokenizers
// does: U+11F00 (KAWI SIGN CANDRABINDU, 15.0) and U+0897 (ARABIC PEPET, 16.0) stay in their word.
TEST(BpeTiny, MarksOfUnicode16JoinTheirWordAsInTokenizers) {
  const std::string o200k =
      R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+)"
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+)"
      R"([\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+)"
      R"([\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  const SplitRegex regex(o200k, false);
  auto pieces = [&](const std::string& text) {
    std::vector<std::string_view> out;
    regex.split_isolated(text, &out);
    return std::vector<std::string>(out.begin(), out.end());
  };
  EXPECT_EQ(pieces("x\U00011F00's"), std::vector<std::string>{"x\U00011F00's"});
  EXPECT_EQ(pieces("a\u0897.com"), (std::vector<std::string>{"a\u0897", ".com"}));
  // Without braces Oniguruma reads \pL as the letters "pL".
  EXPECT_EQ(SplitRegex(R"(\pL)", false).matches("ab pL"),
            (std::vector<std::pair<size_t, size_t>>{{3, 5}}));
}

// Every Unicode property class a pre-tokenizer pattern may use (each general category and group
// of them, negated by \P or ^, in and out of [...] and [^...], long names, \s \S \d \D) matches
// what tokenizers' Oniguruma (Unicode 16) matches, for every code point of planes 0-3 and 14
// (tests/reference/pretokenize_classes.py). Debian 12's PCRE2 has Unicode 14 tables.
TEST(PreTokenizerClasses, MatchTokenizersOnEveryCodePoint) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  ScratchDir dir("qtrain-classes");
  std::string output;
  ASSERT_EQ(
      testing::run_reference_script("pretokenize_classes.py", {dir.file("classes.json")}, &output),
      0)
      << output;
  const json reference = json::parse(testing::read_file(dir.file("classes.json")));
  struct Plane {
    std::string text;
    std::vector<uint32_t> code_point_at;  // by byte offset
  };
  std::vector<Plane> planes;
  for (const auto& number : reference["planes"]) {
    Plane& plane = planes.emplace_back();
    const uint32_t first = number.get<uint32_t>() << 16;
    for (uint32_t cp = first; cp < first + 0x10000; ++cp) {
      if (cp >= 0xD800 && cp <= 0xDFFF) continue;
      const size_t offset = plane.text.size();
      append_utf8(cp, plane.text);
      plane.code_point_at.resize(plane.text.size(), cp);
      plane.code_point_at[offset] = cp;
    }
  }
  size_t differing_patterns = 0;
  for (const auto& entry : reference["patterns"]) {
    const std::string pattern = entry["pattern"];
    std::vector<bool> expected(0x110000, false), actual(0x110000, false);
    for (const auto& range : entry["matched"]) {
      for (uint32_t cp = range[0]; cp <= range[1].get<uint32_t>(); ++cp) expected[cp] = true;
    }
    const SplitRegex regex(pattern, false);
    for (const Plane& plane : planes) {
      for (const auto& [begin, end] : regex.matches(plane.text)) {
        for (size_t offset = begin; offset < end; ++offset) {
          actual[plane.code_point_at[offset]] = true;
        }
      }
    }
    std::string differences;
    size_t count = 0;
    for (uint32_t cp = 0; cp < 0x110000; ++cp) {
      if (expected[cp] == actual[cp]) continue;
      if (++count <= 8) {
        char hex[16];
        std::snprintf(hex, sizeof hex, " U+%04X", cp);
        differences += hex + std::string(actual[cp] ? "(only qtrain)" : "(only tokenizers)");
      }
    }
    if (count > 0 && ++differing_patterns <= 20) {
      ADD_FAILURE() << pattern << ": " << count << " code points differ:" << differences;
    }
  }
  std::cout << "[ classes ] " << reference["patterns"].size() - differing_patterns << " of "
            << reference["patterns"].size() << " patterns match tokenizers on every code point\n";
  EXPECT_EQ(differing_patterns, 0u);
  EXPECT_GT(reference["patterns"].size(), 150u);
}

// ---------------------------------------------------------------------------------------------
// Errors name the file and the field.

void expect_error(const json& j, ErrorKind kind, const std::string& field,
                  const std::string& what_has = "") {
  try {
    BpeTokenizer::from_json_text(j.dump(), "dir/tokenizer.json");
    ADD_FAILURE() << "expected an error at " << field;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    EXPECT_EQ(e.context().file, "dir/tokenizer.json") << e.what();
    EXPECT_EQ(e.context().field, field) << e.what();
    EXPECT_NE(std::string(e.what()).find(what_has), std::string::npos) << e.what();
  }
}

TEST(BpeErrors, MalformedJson) {
  try {
    BpeTokenizer::from_json_text("{\"model\": ", "dir/tokenizer.json");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFormat);
    EXPECT_NE(std::string(e.what()).find("dir/tokenizer.json"), std::string::npos) << e.what();
  }
}

TEST(BpeErrors, Model) {
  json j = tiny_tokenizer_json();
  j.erase("model");
  expect_error(j, ErrorKind::kFormat, "model");
  j = tiny_tokenizer_json();
  j["model"]["type"] = "WordPiece";
  expect_error(j, ErrorKind::kUnsupported, "model.type", "WordPiece");
  j = tiny_tokenizer_json();
  j["model"].erase("vocab");
  expect_error(j, ErrorKind::kFormat, "model.vocab");
  j = tiny_tokenizer_json();
  j["model"].erase("merges");
  expect_error(j, ErrorKind::kFormat, "model.merges");
  j = tiny_tokenizer_json();
  j["model"]["merges"].push_back("h nowhere");
  expect_error(j, ErrorKind::kFormat, "model.merges[6]", "nowhere");
  j = tiny_tokenizer_json();
  j["model"]["merges"].push_back("l d");  // "ld" is not in the vocabulary
  expect_error(j, ErrorKind::kFormat, "model.merges[6]", "\"ld\"");
  j = tiny_tokenizer_json();
  j["model"]["merges"].push_back("a b c");
  expect_error(j, ErrorKind::kFormat, "model.merges[6]");
  j = tiny_tokenizer_json();
  j["model"]["vocab"]["x"] = "seven";
  expect_error(j, ErrorKind::kFormat, "model.vocab.x");
  j = tiny_tokenizer_json();
  j["model"]["dropout"] = 0.1;
  expect_error(j, ErrorKind::kUnsupported, "model.dropout");
  j = tiny_tokenizer_json();
  j["model"]["continuing_subword_prefix"] = "##";
  expect_error(j, ErrorKind::kUnsupported, "model.continuing_subword_prefix");
}

// fuzz_tokenizer_json finding: one vocabulary id near 2^31 made the dense id tables ask for
// tens of GB. Gaps are accepted up to max(tokens in model.vocab, 1024).
TEST(BpeErrors, SparseIdsAreRefusedPastTheGapLimit) {
  json j = tiny_tokenizer_json();
  const auto used = static_cast<int64_t>(j["model"]["vocab"].size());
  ASSERT_LT(used, 1024);
  ASSERT_TRUE(j["model"]["vocab"].contains("x"));
  j["model"]["vocab"]["x"] = used + 1023;  // 1024 ids below it unused (x's old one among them)
  const BpeTokenizer loaded = tiny(j);
  EXPECT_EQ(loaded.vocab_size(), used + 1024);
  EXPECT_EQ(loaded.decode({used + 1023}), "x");
  EXPECT_EQ(loaded.encode("x").back(), used + 1023);
  j["model"]["vocab"]["x"] = used + 1024;
  expect_error(j, ErrorKind::kFormat, "model.vocab", "too sparse");
  j["model"]["vocab"]["x"] = 2000000000;
  expect_error(j, ErrorKind::kFormat, "model.vocab", "the largest is 2000000000");
}

TEST(BpeErrors, Components) {
  json j = tiny_tokenizer_json();
  j["normalizer"] = {{"type", "Lowercase"}};
  expect_error(j, ErrorKind::kUnsupported, "normalizer.type", "Lowercase");
  j["normalizer"] = {{"type", "Sequence"},
                     {"normalizers", {{{"type", "NFC"}}, {{"type", "NFKC"}}}}};
  expect_error(j, ErrorKind::kUnsupported, "normalizer.normalizers[1].type", "NFKC");
  j = tiny_tokenizer_json();
  j["pre_tokenizer"]["pretokenizers"][0]["type"] = "Whitespace";
  expect_error(j, ErrorKind::kUnsupported, "pre_tokenizer.pretokenizers[0].type", "Whitespace");
  j = tiny_tokenizer_json();
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed";
  expect_error(j, ErrorKind::kUnsupported, "pre_tokenizer.pretokenizers[0].behavior");
  j = tiny_tokenizer_json();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  expect_error(j, ErrorKind::kFormat, "pre_tokenizer.pretokenizers[0].pattern");
  j = tiny_tokenizer_json();
  j["pre_tokenizer"] = j["pre_tokenizer"]["pretokenizers"][0];  // Split without ByteLevel
  expect_error(j, ErrorKind::kUnsupported, "pre_tokenizer");
  j = tiny_tokenizer_json();
  j["pre_tokenizer"] = nullptr;
  expect_error(j, ErrorKind::kUnsupported, "pre_tokenizer");
  j = tiny_tokenizer_json();
  j["decoder"] = {{"type", "Metaspace"}};
  expect_error(j, ErrorKind::kUnsupported, "decoder.type", "Metaspace");
  j = tiny_tokenizer_json();
  j["post_processor"] = {{"type", "BertProcessing"}};
  expect_error(j, ErrorKind::kUnsupported, "post_processor.type", "BertProcessing");
  j = tiny_tokenizer_json();
  j["added_tokens"][0]["single_word"] = true;
  expect_error(j, ErrorKind::kUnsupported, "added_tokens[0].single_word");
  j = tiny_tokenizer_json();
  j["added_tokens"][0]["id"] = 300;  // tokenizers would number it 262
  expect_error(j, ErrorKind::kFormat, "added_tokens[0].id");
}

TEST(BpeErrors, ConfigNamesAnUnknownToken) {
  try {
    BpeTokenizer::from_json_text(tiny_tokenizer_json().dump(), "dir/tokenizer.json",
                                 R"({"eos_token": "</s>"})", "dir/tokenizer_config.json");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFormat);
    EXPECT_EQ(e.context().file, "dir/tokenizer_config.json");
    EXPECT_EQ(e.context().field, "eos_token");
  }
}

// ---------------------------------------------------------------------------------------------
// load_tokenizer.

TEST(BpeLoad, TokenizerJsonOnlyDirectoryGivesBpe) {
  ScratchDir dir;
  testing::write_file(dir.file("tokenizer.json"), tiny_tokenizer_json().dump());
  auto tok = load_tokenizer(dir.path());
  ASSERT_NE(dynamic_cast<BpeTokenizer*>(tok.get()), nullptr);
  EXPECT_TRUE(tok->add_bos_default());  // the template's
  EXPECT_EQ(tok->encode("hello", tok->add_bos_default(), tok->add_eos_default()),
            (std::vector<int64_t>{263, 259}));

  // tokenizer_config.json's add_bos_token wins over the template; its tokens set the ids.
  testing::write_file(dir.file("tokenizer_config.json"),
                      R"({"add_bos_token": false, "add_eos_token": true, "eos_token": "<|eot|>"})");
  tok = load_tokenizer(dir.path());
  EXPECT_FALSE(tok->add_bos_default());
  EXPECT_TRUE(tok->add_eos_default());
  EXPECT_EQ(tok->encode("hello", tok->add_bos_default(), tok->add_eos_default()),
            (std::vector<int64_t>{259, 262}));

  testing::write_file(dir.file("tokenizer_config.json"), "{ not json");
  try {
    load_tokenizer(dir.path());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFormat);
    EXPECT_NE(std::string(e.what()).find("tokenizer_config.json"), std::string::npos);
  }
}

TEST(BpeLoad, NonByteLevelTokenizerJsonIsUnsupported) {
  ScratchDir dir;
  json j = tiny_tokenizer_json();
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}};
  testing::write_file(dir.file("tokenizer.json"), j.dump());
  try {
    load_tokenizer(dir.path());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_EQ(e.context().file, dir.file("tokenizer.json"));
  }
}

}  // namespace
}  // namespace qtrain
