// SentencePiece training, the tokenizer wrapper and the HF tokenizer files derived from it.
#include "core/error.h"
#include "data/sentencepiece_to_hf.h"
#include "data/sentencepiece_tokenizer.h"
#include "data/sentencepiece_trainer.h"
#include "tests/support/test_support.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <memory>

namespace qtrain {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;

std::vector<std::string> license_corpus() {
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator("/usr/share/common-licenses")) {
    if (entry.is_regular_file() && !entry.is_symlink()) files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

// One tokenizer trained for the whole suite (vocab 512 on the license texts).
class SentencePieceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new ScratchDir("qtrain-sp");
    model_path_ = train_sentencepiece(license_corpus(), 512, dir_->file("sp"));
    tokenizer_ = new SentencePieceTokenizer(SentencePieceTokenizer::load(model_path_));
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete dir_;
  }
  static const SentencePieceTokenizer& tok() { return *tokenizer_; }

  static ScratchDir* dir_;
  static std::string model_path_;
  static SentencePieceTokenizer* tokenizer_;
};

ScratchDir* SentencePieceTest::dir_ = nullptr;
std::string SentencePieceTest::model_path_;
SentencePieceTokenizer* SentencePieceTest::tokenizer_ = nullptr;

TEST_F(SentencePieceTest, PrefixGetsModelExtension) {
  EXPECT_EQ(model_path_, dir_->file("sp.model"));
  EXPECT_TRUE(fs::exists(model_path_));
}

TEST_F(SentencePieceTest, LlamaStyleSpecialTokens) {
  EXPECT_EQ(tok().vocab_size(), 512);
  EXPECT_EQ(tok().unk_id(), 0);
  EXPECT_EQ(tok().bos_id(), 1);
  EXPECT_EQ(tok().eos_id(), 2);
  EXPECT_EQ(tok().pad_id(), -1);
  EXPECT_EQ(tok().piece(0), "<unk>");
  EXPECT_EQ(tok().piece(1), "<s>");
  EXPECT_EQ(tok().piece(2), "</s>");
  EXPECT_TRUE(tok().is_unknown(0));
  EXPECT_TRUE(tok().is_control(1));
  EXPECT_TRUE(tok().is_control(2));
  EXPECT_FALSE(tok().is_control(300));
}

TEST_F(SentencePieceTest, ByteFallbackPiecesFollowTheSpecials) {
  for (int byte = 0; byte < 256; ++byte) {
    const int64_t id = 3 + byte;
    char expected[8];
    std::snprintf(expected, sizeof(expected), "<0x%02X>", byte);
    EXPECT_EQ(tok().piece(id), expected);
    EXPECT_TRUE(tok().is_byte(id));
  }
  EXPECT_FALSE(tok().is_byte(3 + 256));
}

TEST_F(SentencePieceTest, DigitsAreNeverMerged) {
  for (int64_t id = 0; id < tok().vocab_size(); ++id) {
    const std::string& piece = tok().piece(id);
    if (tok().is_byte(id)) continue;
    EXPECT_LE(std::count_if(piece.begin(), piece.end(), [](char c) { return std::isdigit(c); }), 1)
        << piece;
  }
}

TEST_F(SentencePieceTest, RoundTripsAsciiAndUtf8) {
  const std::vector<std::string> texts = {
      "The GNU General Public License",
      " leading and trailing spaces ",
      "two  spaces,   three",
      "tab\tnewline\nend",
      "digits 0123456789",
      "h\u00e9llo w\u00f6rld \u2713 na\u00efve",
      "\u65e5\u672c\u8a9e \U0001F642 \u2211",
      "",
      " ",
  };
  for (const auto& text : texts) {
    const auto ids = tok().encode(text);
    EXPECT_EQ(tok().decode(ids), text) << text;
  }
}

TEST_F(SentencePieceTest, UnseenCharactersFallBackToBytes) {
  const std::string text = "\u65e5\u672c";  // not in the license texts: 6 UTF-8 bytes
  const auto ids = tok().encode(text);
  int64_t bytes =
      std::count_if(ids.begin(), ids.end(), [](int64_t id) { return id >= 3 && id < 259; });
  EXPECT_EQ(bytes, 6);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), tok().unk_id()), 0);
}

TEST_F(SentencePieceTest, BosAndEosFrameTheText) {
  const auto plain = tok().encode("License");
  const auto framed = tok().encode("License", /*add_bos=*/true, /*add_eos=*/true);
  ASSERT_EQ(framed.size(), plain.size() + 2);
  EXPECT_EQ(framed.front(), 1);
  EXPECT_EQ(framed.back(), 2);
  EXPECT_TRUE(std::equal(plain.begin(), plain.end(), framed.begin() + 1));
  EXPECT_EQ(tok().decode(framed), "License");
}

TEST_F(SentencePieceTest, SpecialTokenTextIsPlainText) {
  const auto ids = tok().encode("<s> hi </s>");
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 1), 0);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 2), 0);
  EXPECT_EQ(tok().decode(ids), "<s> hi </s>");
}

TEST_F(SentencePieceTest, DecodeRejectsOutOfRangeIds) {
  try {
    tok().decode({5, 512});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFormat);
    EXPECT_NE(std::string(e.what()).find("512"), std::string::npos) << e.what();
  }
  EXPECT_THROW(tok().decode({-1}), Error);
  EXPECT_THROW(tok().piece(512), Error);
}

TEST_F(SentencePieceTest, TrainingIsDeterministic) {
  ScratchDir dir("qtrain-sp2");
  const std::string again = train_sentencepiece(license_corpus(), 512, dir.file("again.model"));
  EXPECT_EQ(again, dir.file("again.model"));
  EXPECT_EQ(testing::read_file(again), testing::read_file(model_path_));
}

TEST_F(SentencePieceTest, MergesRankByMergedPieceId) {
  const auto merges = sentencepiece_bpe_merges(tok());
  ASSERT_FALSE(merges.empty());
  int64_t previous = -1;
  for (const auto& [left, right] : merges) {
    const int64_t merged = tok().piece_to_id(left + right);
    ASSERT_NE(merged, tok().unk_id()) << left << " + " << right;
    EXPECT_GE(merged, previous);
    previous = merged;
  }
}

TEST_F(SentencePieceTest, HfTokenizerJsonDescribesTheModel) {
  const auto j = nlohmann::json::parse(hf_tokenizer_json(tok()));
  EXPECT_EQ(j["model"]["type"], "BPE");
  EXPECT_EQ(j["model"]["byte_fallback"], true);
  EXPECT_EQ(j["model"]["vocab"].size(), 512u);
  EXPECT_EQ(j["model"]["vocab"]["<s>"], 1);
  EXPECT_EQ(j["model"]["vocab"]["<0x41>"], 3 + 0x41);
  EXPECT_EQ(j["added_tokens"].size(), 3u);
  EXPECT_EQ(j["post_processor"]["special_tokens"]["<s>"]["ids"], nlohmann::json::array({1}));
  EXPECT_EQ(j["normalizer"]["normalizers"][0]["type"], "Prepend");
  EXPECT_TRUE(j["pre_tokenizer"].is_null());

  const auto config = nlohmann::json::parse(hf_tokenizer_config_json(tok()));
  EXPECT_EQ(config["add_bos_token"], true);
  EXPECT_EQ(config["add_eos_token"], false);
  EXPECT_EQ(config["tokenizer_class"], "PreTrainedTokenizerFast");
  EXPECT_EQ(config["bos_token"], "<s>");
  EXPECT_TRUE(config["pad_token"].is_null());
  EXPECT_EQ(config["added_tokens_decoder"]["2"]["content"], "</s>");

  const auto map = nlohmann::json::parse(hf_special_tokens_map_json(tok()));
  EXPECT_EQ(map["unk_token"]["content"], "<unk>");
  EXPECT_FALSE(map.contains("pad_token"));
}

TEST(SentencePieceLoad, MissingFileIsAnIoErrorNamingIt) {
  try {
    SentencePieceTokenizer::load("/nonexistent/tokenizer.model");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/tokenizer.model"), std::string::npos);
  }
}

TEST(SentencePieceLoad, CorruptFileIsAFormatErrorNamingIt) {
  ScratchDir dir;
  for (const std::string& contents : {std::string("not a model at all\n"), std::string()}) {
    testing::write_file(dir.file("tokenizer.model"), contents);
    try {
      SentencePieceTokenizer::load(dir.file("tokenizer.model"));
      FAIL() << "expected an error for " << contents.size() << " bytes";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kFormat);
      EXPECT_NE(std::string(e.what()).find(dir.file("tokenizer.model")), std::string::npos)
          << e.what();
    }
  }
}

TEST(SentencePieceTrain, MissingCorpusFileIsNamed) {
  ScratchDir dir;
  try {
    train_sentencepiece({"/nonexistent/corpus.txt"}, 300, dir.file("m"));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/corpus.txt"), std::string::npos);
  }
  EXPECT_FALSE(fs::exists(dir.file("m.model")));
}

TEST(SentencePieceTrain, VocabularyTooSmallForBytesIsAConfigError) {
  ScratchDir dir;
  testing::write_file(dir.file("corpus.txt"), "hello world\nhello there\n");
  try {
    train_sentencepiece({dir.file("corpus.txt")}, 100, dir.file("m"));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir.file("m.model")));
}

TEST(SentencePieceTrain, SmallCorpusShrinksTheVocabularyWhenAllowed) {
  ScratchDir dir;
  testing::write_file(dir.file("corpus.txt"), "hello world\nhello there\nworld of words\n");
  SentencePieceTrainOptions options;
  EXPECT_THROW(train_sentencepiece({dir.file("corpus.txt")}, 1000, dir.file("hard"), options),
               Error);
  options.hard_vocab_limit = false;
  const auto path = train_sentencepiece({dir.file("corpus.txt")}, 1000, dir.file("soft"), options);
  const auto tok = SentencePieceTokenizer::load(path);
  EXPECT_GT(tok.vocab_size(), 259);
  EXPECT_LT(tok.vocab_size(), 1000);
  EXPECT_EQ(tok.decode(tok.encode("hello words")), "hello words");
}

}  // namespace
}  // namespace qtrain
