// Chat samples tokenized in one pass: build_examples must give the ids of the whole rendered text
// and the labels of the per-boundary rule (each token takes the loss flag of the piece it starts
// in: the tokens of the text up to a boundary that agree with the whole text's), computed here
// the slow way by encoding every prefix. A byte-level BPE tokenizer with the chatml and llama3
// template tokens, lstrip / rstrip / normalized added tokens and NFC, and a SentencePiece one,
// on random conversations full of template lookalikes, partial tokens and combining marks.
#include "data/bpe_tokenizer.h"
#include "data/byte_level.h"
#include "data/examples.h"
#include "data/sentencepiece_trainer.h"
#include "data/tokenizer.h"
#include "tests/support/test_support.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <random>

namespace qtrain {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Words the BPE builds up byte by byte, so that merges cross the template's piece boundaries.
const std::vector<std::string> kMergedWords = {
    "user", "assistant", "system", "\n\n", "  ",   " the", " hello", "hello", "Hello",
    "ing",  " is",       "ab",     "abc",  "café", "12",   "123",    "<|",    "|>"};

json chat_tokenizer_json() {
  json vocab = json::object();
  const auto& chars = byte_level_chars();
  for (int b = 0; b < 256; ++b) vocab[chars[b]] = b;
  json merges = json::array();
  for (const std::string& word : kMergedWords) {
    std::string left = to_byte_level(word.substr(0, 1));
    for (size_t i = 1; i < word.size(); ++i) {
      const std::string right = to_byte_level(word.substr(i, 1));
      if (!vocab.contains(left + right)) {
        merges.push_back(left + " " + right);
        vocab[left + right] = vocab.size();
      }
      left += right;
    }
  }
  int64_t next_id = static_cast<int64_t>(vocab.size());
  json added = json::array();
  auto add = [&](const std::string& content, bool special, bool normalized, bool lstrip = false,
                 bool rstrip = false) {
    added.push_back({{"id", next_id++},
                     {"content", content},
                     {"special", special},
                     {"normalized", normalized},
                     {"lstrip", lstrip},
                     {"rstrip", rstrip},
                     {"single_word", false}});
  };
  for (const char* special : {"<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|endoftext|>",
                              "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|im"}) {
    add(special, true, false);
  }
  add("<tool_call>", false, false);       // atomic though not special
  add("<mask>", true, false, true);       // lstrip: not atomic
  add("[r]", false, false, false, true);  // rstrip: not atomic
  add("cafétok", false, true);            // normalized: not atomic
  add(" <|sp|>", true, false);            // atomic, but can start inside what [r] strips
  return {{"version", "1.0"},
          {"added_tokens", added},
          {"normalizer", {{"type", "NFC"}}},
          {"pre_tokenizer",
           {{"type", "Sequence"},
            {"pretokenizers",
             {{{"type", "Split"},
               {"pattern",
                {{"Regex", R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3})"
                           R"(| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}}},
               {"behavior", "Isolated"},
               {"invert", false}},
              {{"type", "ByteLevel"},
               {"add_prefix_space", false},
               {"trim_offsets", true},
               {"use_regex", false}}}}}},
          {"post_processor", {{"type", "ByteLevel"}, {"trim_offsets", false}}},
          {"decoder", {{"type", "ByteLevel"}}},
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
            {"merges", merges}}}};
}

std::unique_ptr<Tokenizer> chat_bpe() {
  return std::make_unique<BpeTokenizer>(BpeTokenizer::from_json_text(
      chat_tokenizer_json().dump(), "chat/tokenizer.json",
      R"({"bos_token": "<|begin_of_text|>", "eos_token": "<|endoftext|>"})",
      "chat/tokenizer_config.json"));
}

struct Piece {
  std::string text;
  int64_t special = -1;
  bool loss = false;
};

// The pieces examples.cpp forms from a record's turns.
std::vector<Piece> pieces_of(const std::vector<PromptParts>& turns, const Tokenizer& tok,
                             const ExampleOptions& options) {
  std::vector<Piece> pieces;
  auto special = [&](int64_t id, bool loss) {
    if (id >= 0) pieces.push_back({"", id, loss});
  };
  auto text = [&](const std::string& value, bool loss) {
    if (!value.empty()) pieces.push_back({value, -1, loss});
  };
  if (options.add_bos) special(tok.bos_id(), false);
  for (const auto& turn : turns) {
    if (turn.bos_before_prompt) special(tok.bos_id(), options.train_on_inputs);
    text(turn.prompt, options.train_on_inputs);
    text(turn.response, true);
    if (turn.eos_after_response) special(tok.eos_id(), true);
  }
  if (options.add_eos && !(!turns.empty() && turns.back().eos_after_response)) {
    special(tok.eos_id(), true);
  }
  return pieces;
}

void append(Example& example, const std::vector<int64_t>& ids, size_t begin, size_t end,
            bool loss) {
  for (size_t i = begin; i < end; ++i) {
    example.ids.push_back(ids[i]);
    example.labels.push_back(loss ? ids[i] : kIgnoreLabel);
  }
}

// The per-boundary rule computed directly: every prefix of a run of text pieces encoded.
Example slow_example(const std::vector<PromptParts>& turns, const Tokenizer& tok,
                     const ExampleOptions& options) {
  const std::vector<Piece> pieces = pieces_of(turns, tok, options);
  Example example;
  for (size_t first = 0; first < pieces.size();) {
    if (pieces[first].special >= 0) {
      append(example, {pieces[first].special}, 0, 1, pieces[first].loss);
      ++first;
      continue;
    }
    size_t last = first;
    std::string whole;
    while (last < pieces.size() && pieces[last].special < 0) whole += pieces[last++].text;
    const std::vector<int64_t> ids = tok.encode(whole, false, false);
    std::string prefix;
    size_t start = 0;
    for (size_t p = first; p < last; ++p) {
      prefix += pieces[p].text;
      size_t end = ids.size();
      if (p + 1 < last) {
        const std::vector<int64_t> prefix_ids = tok.encode(prefix, false, false);
        size_t agree = 0;
        while (agree < ids.size() && agree < prefix_ids.size() && ids[agree] == prefix_ids[agree])
          ++agree;
        end = std::max(start, agree);
      }
      append(example, ids, start, end, pieces[p].loss);
      start = end;
    }
    first = last;
  }
  if (!example.labels.empty()) example.labels[0] = kIgnoreLabel;
  return example;
}

// Content made of template lookalikes, partial and whole added tokens, spaces, newlines and
// combining marks, so that boundaries fall everywhere a tokenizer could merge across them.
std::string random_content(std::mt19937& rng) {
  static const std::vector<std::string> fragments = {
      "hello",      " hello",      "Hello",      " the",
      "\n",         "\n\n",        "  ",         " ",
      "abc",        "123",         "4",          "caf",
      "e\u0301",    "\u0301",      "é",          "café",
      "日本",       "\U0001F642",  "<|im_end|>", "<|im_start|>",
      "<|im",       "<|",          "|>",         "_end|>",
      "<|eot_id|>", "<tool_call>", "<mask>",     " <mask>",
      "[r]  ",      "[r]",         "cafétok",    "'s",
      "user",       "assistant",   "\t",         "<|start_header_id|>",
      " <|sp|>",    "[r] <|sp|>"};
  std::string content;
  const size_t count = rng() % 7;
  for (size_t i = 0; i < count; ++i) content += fragments[rng() % fragments.size()];
  return content;
}

// llama2 and mistral need user and assistant to alternate (and mistral has no system role);
// chatml and llama3 take any order.
json random_conversation(std::mt19937& rng, const std::string& chat_template) {
  const bool alternate = chat_template == "llama2" || chat_template == "mistral";
  json messages = json::array();
  if (chat_template != "mistral" && rng() % 3 == 0) {
    messages.push_back({{"role", "system"}, {"content", random_content(rng)}});
  }
  const size_t turns = 1 + rng() % 5;
  for (size_t t = 0; t < turns; ++t) {
    if (alternate || rng() % 4 != 0) {
      messages.push_back({{"role", "user"}, {"content", random_content(rng)}});
    }
    messages.push_back({{"role", "assistant"}, {"content", random_content(rng)}});
  }
  return {{"messages", messages}};
}

void expect_one_pass_matches_slow_rule(const Tokenizer& tok, const std::string& chat_template,
                                       int conversations) {
  std::mt19937 rng(7);
  for (int c = 0; c < conversations; ++c) {
    ExampleOptions options;
    options.chat_template = chat_template;
    options.max_seq_len = 1 << 20;
    options.train_on_inputs = rng() % 4 == 0;
    options.add_bos = rng() % 3 != 0;
    options.add_eos = rng() % 3 != 0;
    const Record record{random_conversation(rng, chat_template), "chat.jsonl", c + 1};
    const auto turns = format_record(record, "chat", {}, chat_template);
    Example expected = slow_example(turns, tok, options);
    const auto examples = build_examples({record}, "chat", {}, tok, options);
    ASSERT_EQ(examples.size(), 1u) << record.value.dump();
    EXPECT_EQ(examples[0].ids, expected.ids) << chat_template << ": " << record.value.dump();
    EXPECT_EQ(examples[0].labels, expected.labels) << chat_template << ": " << record.value.dump();
    if (chat_template == "chatml" || chat_template == "llama3") {
      std::string text;
      for (const auto& turn : turns) text += turn.prompt + turn.response;
      std::vector<int64_t> whole;
      if (options.add_bos) whole.push_back(tok.bos_id());
      const auto ids = tok.encode(text, false, false);
      whole.insert(whole.end(), ids.begin(), ids.end());
      if (options.add_eos) whole.push_back(tok.eos_id());
      EXPECT_EQ(examples[0].ids, whole) << record.value.dump();
    }
  }
}

TEST(ChatMasks, BpeOnePassGivesTheSlowRulesIdsAndLabels) {
  const auto tok = chat_bpe();
  for (const char* chat_template : {"chatml", "llama3", "llama2", "mistral"}) {
    expect_one_pass_matches_slow_rule(*tok, chat_template, 300);
  }
}

std::vector<std::string> license_corpus() {
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator("/usr/share/common-licenses")) {
    if (entry.is_regular_file() && !entry.is_symlink()) files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

TEST(ChatMasks, SentencePieceOnePassGivesTheSlowRulesIdsAndLabels) {
  testing::ScratchDir dir("qtrain-chat-masks");
  train_sentencepiece(license_corpus(), 512, dir.file("tokenizer.model"));
  const auto tok = load_tokenizer(dir.file("tokenizer.model"));
  for (const char* chat_template : {"chatml", "llama3", "llama2", "mistral"}) {
    expect_one_pass_matches_slow_rule(*tok, chat_template, 60);
  }
}

TEST(ChatMasks, OnlyPlainUnstrippedAddedTokensSplitAtomically) {
  const auto tok = chat_bpe();
  const std::string text = "a<|im_start|>b <mask> c[r]  d<tool_call>cafétok<|im|>";
  const auto segments = tok->split_at_atomic_tokens(text);
  std::vector<std::string> parts;
  std::vector<int64_t> ids;
  size_t covered = 0;
  for (const auto& s : segments) {
    EXPECT_EQ(s.begin, covered);
    covered = s.end;
    parts.push_back(text.substr(s.begin, s.end - s.begin));
    if (s.id >= 0) {
      ids.push_back(s.id);
    } else {
      const auto part = tok->encode(parts.back(), false, false);
      ids.insert(ids.end(), part.begin(), part.end());
    }
  }
  EXPECT_EQ(covered, text.size());
  // "<|im" is the longest token at "<|im|>" (leftmost-longest, as encode finds them).
  EXPECT_EQ(parts, (std::vector<std::string>{"a", "<|im_start|>", "b <mask> c[r]  d", "<tool_call>",
                                             "cafétok", "<|im", "|>"}));
  EXPECT_EQ(ids, tok->encode(text, false, false));
  EXPECT_TRUE(tok->split_at_atomic_tokens("").empty());
}

// The promise examples.cpp relies on: the text cut at atomic tokens encodes to the whole's ids.
TEST(ChatMasks, AtomicSplitEncodesAsTheWholeText) {
  const auto tok = chat_bpe();
  std::mt19937 rng(3);
  for (int i = 0; i < 2000; ++i) {
    const std::string text = random_content(rng) + random_content(rng) + random_content(rng);
    std::vector<int64_t> ids;
    size_t covered = 0;
    for (const auto& segment : tok->split_at_atomic_tokens(text)) {
      ASSERT_EQ(segment.begin, covered) << text;
      ASSERT_LT(segment.begin, segment.end) << text;
      covered = segment.end;
      if (segment.id >= 0) {
        ids.push_back(segment.id);
        continue;
      }
      const auto part =
          tok->encode(text.substr(segment.begin, segment.end - segment.begin), false, false);
      ids.insert(ids.end(), part.begin(), part.end());
    }
    EXPECT_EQ(covered, text.size()) << text;
    EXPECT_EQ(ids, tok->encode(text, false, false)) << text;
  }
}

// A conversation of 3,000 exchanges is one text run in chatml; the one-pass tokenization keeps
// it linear (bench_tokenizer's BM_ChatmlLongConversation times it) and gives the whole text's ids
// with exactly the responses labelled.
TEST(ChatMasks, LongChatmlConversationIsTheWholeTextWithResponsesLabelled) {
  const auto tok = chat_bpe();
  json messages = json::array();
  std::string rendered;
  std::vector<std::string> responses;
  for (int t = 0; t < 3000; ++t) {
    const std::string question = "question " + std::to_string(t) + "?";
    const std::string answer = "answer " + std::to_string(t * 7) + ".";
    messages.push_back({{"role", "user"}, {"content", question}});
    messages.push_back({{"role", "assistant"}, {"content", answer}});
    rendered += "<|im_start|>user\n" + question + "<|im_end|>\n<|im_start|>assistant\n" + answer +
                "<|im_end|>\n";
    responses.push_back(answer + "\n");  // <|im_end|> is special: it decodes to nothing
  }
  ExampleOptions options;
  options.chat_template = "chatml";
  options.max_seq_len = 1 << 20;
  options.add_bos = false;
  options.add_eos = false;
  const auto examples =
      build_examples({{{{"messages", messages}}, "long.jsonl", 1}}, "chat", {}, *tok, options);
  ASSERT_EQ(examples.size(), 1u);
  const Example& example = examples[0];
  EXPECT_EQ(example.ids, tok->encode(rendered, false, false));
  std::vector<std::string> labelled;
  std::vector<int64_t> span;
  for (size_t i = 0; i <= example.ids.size(); ++i) {
    if (i < example.ids.size() && example.labels[i] != kIgnoreLabel) {
      span.push_back(example.labels[i]);
    } else if (!span.empty()) {
      labelled.push_back(tok->decode(span));
      span.clear();
    }
  }
  EXPECT_EQ(labelled, responses);
}

}  // namespace
}  // namespace qtrain
