// A real SentencePiece model against Hugging Face transformers 5.23.0: Mistral 7B v0.1's
// tokenizer.model (32000 pieces, Llama 2 style; scripts/fetch_vocabs.sh takes it from the
// mistral-common 1.13.1 wheel into QTRAIN_LLAMA_CPP_VOCAB_DIR as mistral-tokenizer.model.v1).
// tests/reference/spm_reference.py records transformers' ids for a varied corpus and for
// conversations rendered with Mistral v0.1's chat template; qtrain must give the same ids from
// encode() and from build_examples(format chat, chat_template mistral).
#include "data/examples.h"
#include "data/tokenizer.h"
#include "tests/support/test_support.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

namespace qtrain {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::ScratchDir;

std::vector<std::string> corpus() {
  return {
      "Hello world",
      "Hello, world! How are you today?",
      " leading space",
      "   three leading spaces",
      "trailing spaces   ",
      "multiple    spaces   inside",
      "line one\nline two\n\nline four\n",
      "\n\nstarts with newlines",
      "crlf\r\nline\r\n",
      "tabs\tand\t\tmore tabs",
      "def f(x):\n\treturn x * 2  # double\n\nclass A:\n    pass\n",
      "for (int i = 0; i < n; ++i) {\n  sum += a[i];\n}",
      "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
      "1234567890 3.14159 -42 1e-9 2024-01-31",
      "Numbers: 1,000,000 and 0.001%",
      "caf\xc3\xa9 na\xc3\xafve r\xc3\xa9sum\xc3\xa9",      // composed
      "cafe\xcc\x81 nai\xcc\x88ve re\xcc\x81sume\xcc\x81",  // decomposed
      "\xc3\x85ngstr\xc3\xb6m Stra\xc3\x9f"
      "e \xc3\x9c"
      "ber \xc5\x93uvre",  // Ångström Straße Über œuvre
      "\xe4\xbd\xa0\xe5\xa5\xbd\xef\xbc\x8c\xe4\xb8\x96\xe7\x95\x8c\xe3\x80\x82",  // 你好，世界。
      "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81\xae\xe3\x83\x86\xe3\x82\xad\xe3\x82\xb9\xe3"
      "\x83\x88",                                                       // 日本語のテキスト
      "\xed\x95\x9c\xea\xb5\xad\xec\x96\xb4 \xeb\xac\xb8\xec\x9e\xa5",  // 한국어 문장
      "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82, \xd0\xbc\xd0\xb8\xd1\x80!",  // Привет,
                                                                                      // мир!
      "\xd9\x85\xd8\xb1\xd8\xad\xd8\xa8\xd8\xa7 \xd8\xa8\xd8\xa7\xd9\x84\xd8\xb9\xd8\xa7\xd9\x84"
      "\xd9\x85",  // مرحبا بالعالم
      "emoji \xf0\x9f\x98\x80\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd \xf0\x9f\x91\xa8\xe2\x80\x8d\xf0"
      "\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7 \xe2\x9d\xa4\xef\xb8\x8f",  // 😀👍🏽
                                                                            // 👨‍👩‍👧
                                                                            // ❤️
      "rare \xf0\x90\x8d\x88 \xe2\x88\xae \xe2\x84\x9d \xef\xac\x81",       // 𐍈 ∮ ℝ ﬁ
      "fullwidth \xef\xbc\xa1\xef\xbc\xa2\xef\xbc\xa3\xef\xbc\x91\xef\xbc\x92",  // ＡＢＣ１２
      "nbsp\xc2\xa0here and\xe2\x80\x83"
      "em space",
      "the text <s> inside",
      "a </s> b <unk> c",
      "[INST] not a special [/INST]",
      "<<SYS>>\nsystem\n<</SYS>>\n\n",
      "mixed: \xce\xb1\xce\xb2\xce\xb3 + 123 = \xe2\x88\x91 \xf0\x9f\x9a\x80!",
      "a",
      " ",
      "\n",
      "\t",
      "UPPER lower MiXeD CamelCase snake_case kebab-case",
      "https://example.com/path?query=1&x=y#frag",
      "email@example.org, @handle, #hashtag",
      "Quotes: \xe2\x80\x9c"
      "double\xe2\x80\x9d \xe2\x80\x98single\xe2\x80\x99 "
      "\xc2\xabguillemets\xc2\xbb",
      "Ellipsis\xe2\x80\xa6 dash \xe2\x80\x94 en \xe2\x80\x93 minus \xe2\x88\x92",
      "supercalifragilisticexpialidocious antidisestablishmentarianism",
      "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog.",
  };
}

// Mistral v0.1 conversations (no system role; user and assistant alternate).
json conversations() {
  return json::parse(R"([
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "The capital of France is Paris."}],
    [{"role": "user", "content": "Write a haiku about the sea.\nMake it calm."},
     {"role": "assistant", "content": "Soft waves fold and breathe,\nsalt light on a quiet shore\u2014\nthe tide keeps its time."},
     {"role": "user", "content": "Now one in French, s'il te pla\u00eet!"},
     {"role": "assistant", "content": " La mer respire,\nvagues douces, caf\u00e9 du soir \u2014 \u00e9t\u00e9 sans fin."}],
    [{"role": "user", "content": "def add(a, b):\n\treturn a + b\n\nExplain this in \u4e2d\u6587 \ud83d\ude00"},
     {"role": "assistant", "content": "\u8fd9\u4e2a\u51fd\u6570\u8fd4\u56de a + b\u3002"},
     {"role": "user", "content": "  spaces  around  "},
     {"role": "assistant", "content": "Numbers: 3.14, 42, 1e-9."},
     {"role": "user", "content": "Thanks"},
     {"role": "assistant", "content": "You're welcome!"}]
  ])");
}

struct Reference {
  std::unique_ptr<ScratchDir> dir;
  json data;
  std::unique_ptr<Tokenizer> tokenizer;
  std::string error;
};

// "" when the test should skip; sets *fail when it must fail instead.
std::string model_path(std::string* why) {
  const char* dir = std::getenv("QTRAIN_LLAMA_CPP_VOCAB_DIR");
  if (!dir || !*dir) {
    *why = "QTRAIN_LLAMA_CPP_VOCAB_DIR is not set (scripts/fetch_vocabs.sh)";
    return "";
  }
  const std::string path = std::string(dir) + "/mistral-tokenizer.model.v1";
  if (!fs::exists(path)) {
    *why = path + " is missing (run scripts/fetch_vocabs.sh)";
    return "";
  }
  return path;
}

const Reference& reference(const std::string& model) {
  static Reference r;
  if (r.tokenizer || !r.error.empty()) return r;
  r.dir = std::make_unique<ScratchDir>("qtrain-spm-real");
  json cases;
  cases["corpus"] = corpus();
  cases["chats"] = conversations();
  testing::write_file(r.dir->file("cases.json"), cases.dump());
  std::string output;
  if (testing::run_reference_script(
          "spm_reference.py", {model, r.dir->file("cases.json"), r.dir->file("reference.json")},
          &output) != 0) {
    r.error = "spm_reference.py failed:\n" + output.substr(0, 4000);
    return r;
  }
  r.data = json::parse(testing::read_file(r.dir->file("reference.json")));
  r.tokenizer = load_tokenizer(model);
  return r;
}

class RealSentencePiece : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    model_ = model_path(&why);
    if (model_.empty()) {
      const char* dir = std::getenv("QTRAIN_LLAMA_CPP_VOCAB_DIR");
      const char* req = std::getenv("QTRAIN_REQUIRE_INTEROP");
      if (dir && *dir && req && std::string(req) == "1") FAIL() << why;
      GTEST_SKIP() << why;
    }
    QTRAIN_REQUIRE_REFERENCE_PYTHON();
    const Reference& r = reference(model_);
    if (!r.tokenizer) FAIL() << r.error;
    ref_ = &r;
  }

  std::string pieces(const std::vector<int64_t>& ids, size_t from, size_t count) const {
    json out = json::array();
    for (size_t i = from; i < ids.size() && i < from + count; ++i) {
      out.push_back(ref_->data["pieces"][ids[i]]);
    }
    return out.dump();
  }

  // Where two id sequences first differ, with the ids and pieces around it on both sides.
  std::string difference(const std::vector<int64_t>& qtrain, const std::vector<int64_t>& hf) const {
    size_t i = 0;
    while (i < qtrain.size() && i < hf.size() && qtrain[i] == hf[i]) ++i;
    const size_t from = i < 3 ? 0 : i - 3;
    auto slice = [&](const std::vector<int64_t>& v) {
      return json(std::vector<int64_t>(v.begin() + std::min(from, v.size()),
                                       v.begin() + std::min(from + 8, v.size())))
          .dump();
    };
    return "first difference at index " + std::to_string(i) + " (lengths " +
           std::to_string(qtrain.size()) + " / " + std::to_string(hf.size()) + "), from index " +
           std::to_string(from) + ":\n  qtrain: " + slice(qtrain) + " " + pieces(qtrain, from, 8) +
           "\n  HF:     " + slice(hf) + " " + pieces(hf, from, 8);
  }

  std::string model_;
  const Reference* ref_ = nullptr;
};

TEST_F(RealSentencePiece, LoadsTheModel) {
  const Tokenizer& tok = *ref_->tokenizer;
  EXPECT_EQ(tok.vocab_size(), 32000);
  EXPECT_EQ(tok.vocab_size(), ref_->data["vocab_size"].get<int64_t>());
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
}

// transformers 5.23 converts the .model to a tokenizers BPE that is not sentencepiece itself: its
// Metaspace pre-tokenizer drops one leading space, and it merges runs of spaces without
// sentencepiece's whitespace split. qtrain is sentencepiece: its ids must equal the sentencepiece
// library's for every text, and transformers' wherever transformers agrees with sentencepiece.
TEST_F(RealSentencePiece, CorpusIdsMatchTransformers) {
  const Tokenizer& tok = *ref_->tokenizer;
  const auto& cases = ref_->data["corpus"];
  size_t matched_spm = 0, matched_hf = 0, hf_differs = 0, roundtrips = 0;
  for (const auto& c : cases) {
    const std::string text = c["text"];
    const auto ids = tok.encode(text, false, false);
    // qtrain reads text literally ("<s>" is three characters), which is transformers'
    // split_special_tokens=True; without it transformers maps "<s>" / "</s>" in text to the special
    // ids (checked below).
    const auto hf = c["ids_split"].get<std::vector<int64_t>>();
    const auto spm = c["spm_ids"].get<std::vector<int64_t>>();
    if (ids == spm) {
      ++matched_spm;
    } else {
      ADD_FAILURE() << "ids differ from sentencepiece's for " << json(text).dump() << "\n"
                    << difference(ids, spm);
    }
    if (ids == hf) {
      ++matched_hf;
    } else if (hf != spm) {
      ++hf_differs;  // transformers' conversion, not qtrain
      std::cout << "[ mistral v1 ] transformers differs from sentencepiece for "
                << json(text).dump() << ": " << difference(ids, hf) << "\n";
    } else {
      ADD_FAILURE() << "ids differ from transformers' for " << json(text).dump() << "\n"
                    << difference(ids, hf);
    }
    const std::string decoded = tok.decode(ids);
    EXPECT_EQ(decoded, c["spm_decoded"].get<std::string>()) << json(text).dump();
    if (hf == spm) {
      EXPECT_EQ(decoded, c["decoded"].get<std::string>()) << json(text).dump();
    }
    if (decoded == c["spm_decoded"].get<std::string>()) ++roundtrips;
    const bool has_special_text = text.find("<s>") != std::string::npos ||
                                  text.find("</s>") != std::string::npos ||
                                  text.find("<unk>") != std::string::npos;
    if (!has_special_text) {
      EXPECT_EQ(c["ids"], c["ids_split"]) << json(text).dump();
    }
  }
  std::cout << "[ mistral v1 ] " << cases.size() << " texts: " << matched_spm
            << " give sentencepiece's ids, " << matched_hf << " transformers' (" << hf_differs
            << " where transformers differs from sentencepiece), " << roundtrips
            << " decode round trips match\n";
  EXPECT_EQ(matched_spm, cases.size());
  EXPECT_EQ(matched_hf + hf_differs, cases.size());
  EXPECT_EQ(roundtrips, cases.size());
  EXPECT_GE(cases.size(), 40u);
}

TEST_F(RealSentencePiece, ChatExamplesMatchApplyChatTemplate) {
  const Tokenizer& tok = *ref_->tokenizer;
  ExampleOptions options;
  options.chat_template = "mistral";
  options.add_bos = true;
  options.add_eos = true;
  options.max_seq_len = 4096;
  size_t matched_hf = 0;
  const auto& chats = ref_->data["chats"];
  for (const auto& chat : chats) {
    const std::vector<Record> records = {{json{{"messages", chat["messages"]}}, "chat.jsonl", 1}};
    const std::vector<Example> examples = build_examples(records, "chat", {}, tok, options);
    ASSERT_EQ(examples.size(), 1u);
    const auto& ids = examples[0].ids;
    const auto hf = chat["ids"].get<std::vector<int64_t>>();
    const auto spm = chat["spm_ids"].get<std::vector<int64_t>>();
    // The rendered conversation, cut at <s> / </s>, through sentencepiece: exact.
    EXPECT_EQ(ids, spm) << "chat " << chat["text"].dump() << "\n" << difference(ids, spm);
    if (ids == hf) {
      ++matched_hf;
    } else if (hf != spm) {
      // transformers' own whitespace handling (see above), not the template.
      std::cout << "[ mistral v1 ] apply_chat_template differs from sentencepiece for chat "
                << chat["text"].dump() << ": " << difference(ids, hf) << "\n";
    } else {
      ADD_FAILURE() << "chat " << chat["text"].dump() << "\n" << difference(ids, hf);
    }
  }
  std::cout << "[ mistral v1 ] " << matched_hf << " of " << chats.size()
            << " conversations give apply_chat_template's ids\n";
  EXPECT_GE(matched_hf, 2u);
}

}  // namespace
}  // namespace qtrain
