// A model's own Jinja chat template (data/chat_template_jinja.h): real Hugging Face templates from
// llama.cpp's models/templates (scripts/fetch_jinja.sh puts them beside the engine) render byte
// for byte as transformers' apply_chat_template renders them, for multi-turn conversations with
// and without a system prompt, and the training labels build_examples gives fall exactly on the
// assistant spans transformers reports (its generation indices for templates with
// {% generation %} tags, else the rendered-prefix method computed from its renderings).
#include "data/chat_template_jinja.h"

#include "core/error.h"
#include "data/examples.h"
#include "data/prompt_format.h"
#include "data/tokenizer.h"
#include "tests/support/test_support.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <vector>

namespace qtrain {
namespace {

using nlohmann::json;

#define QTRAIN_REQUIRE_JINJA_ENGINE()                                                        \
  do {                                                                                       \
    if (!jinja_engine_available()) {                                                         \
      if (const char* r = std::getenv("QTRAIN_REQUIRE_INTEROP"); r && std::string(r) == "1") \
        FAIL() << "built without the Jinja engine (scripts/fetch_jinja.sh)";                 \
      GTEST_SKIP() << "built without the Jinja engine (scripts/fetch_jinja.sh)";             \
    }                                                                                        \
  } while (0)

// One id per byte, and the template's special token texts as single ids cut out atomically (as
// tokenizer.json added tokens are), so a label per byte shows the mask exactly.
class ByteTokenizer : public Tokenizer {
 public:
  ByteTokenizer(std::string bos, std::string eos) : bos_(std::move(bos)), eos_(std::move(eos)) {}
  std::vector<int64_t> encode(const std::string& text, bool add_bos, bool add_eos) const override {
    std::vector<int64_t> ids;
    if (add_bos) ids.push_back(bos_id());
    for (const auto& segment : split_at_atomic_tokens(text)) {
      if (segment.id >= 0) {
        ids.push_back(segment.id);
      } else {
        for (size_t i = segment.begin; i < segment.end; ++i) {
          ids.push_back(static_cast<unsigned char>(text[i]));
        }
      }
    }
    if (add_eos) ids.push_back(eos_id());
    return ids;
  }
  std::string decode(const std::vector<int64_t>&) const override { return ""; }
  std::vector<TextSegment> split_at_atomic_tokens(std::string_view text) const override {
    std::vector<TextSegment> out;
    size_t start = 0;
    for (size_t i = 0; i < text.size();) {
      int64_t id = -1;
      size_t length = 0;
      if (!bos_.empty() && text.compare(i, bos_.size(), bos_) == 0) {
        id = bos_id(), length = bos_.size();
      } else if (!eos_.empty() && text.compare(i, eos_.size(), eos_) == 0) {
        id = eos_id(), length = eos_.size();
      }
      if (id < 0) {
        ++i;
        continue;
      }
      if (i > start) out.push_back({start, i, -1});
      out.push_back({i, i + length, id});
      i += length;
      start = i;
    }
    if (start < text.size()) out.push_back({start, text.size(), -1});
    return out;
  }
  int64_t vocab_size() const override { return 258; }
  int64_t bos_id() const override { return bos_.empty() ? -1 : 256; }
  int64_t eos_id() const override { return 257; }
  int64_t pad_id() const override { return -1; }

 private:
  std::string bos_, eos_;
};

struct RealTemplate {
  std::string file;  // in $QTRAIN_JINJA_DIR/templates
  std::string bos, eos;
};

// Real templates whose conversations with a system prompt render (as transformers renders them)
// and whose assistant turns are found: by the rendered-prefix method, or ({% generation %}) by
// the template's own tags (LFM2.5, Laguna). Special tokens as the models' tokenizer configs set
// them.
const std::vector<RealTemplate> kTemplates = {
    {"meta-llama-Llama-3.1-8B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>"},
    {"meta-llama-Llama-3.3-70B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>"},
    {"Qwen-Qwen2.5-7B-Instruct.jinja", "", "<|im_end|>"},
    {"Qwen3-Coder.jinja", "", "<|im_end|>"},
    {"HuggingFaceTB-SmolLM3-3B.jinja", "", "<|im_end|>"},
    {"Mistral-Small-3.2-24B-Instruct-2506.jinja", "<s>", "</s>"},
    {"unsloth-mistral-Devstral-Small-2507.jinja", "<s>", "</s>"},
    {"mistralai-Ministral-3-14B-Reasoning-2512.jinja", "<s>", "</s>"},
    {"ibm-granite-granite-4.0.jinja", "", "<|end_of_text|>"},
    {"deepseek-ai-DeepSeek-V3.1.jinja", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"},
    {"GLM-4.6.jinja", "", "<|endoftext|>"},
    {"Kimi-K2-Instruct.jinja", "", "<|im_end|>"},
    {"Apertus-8B-Instruct.jinja", "<s>", "</s>"},
    {"LFM2.5-8B-A1B.jinja", "<|startoftext|>", "<|im_end|>"},
    {"poolside-Laguna-XS.2.jinja", "", "</s>"},
    {"openbmb-MiniCPM5-1B.jinja", "<s>", "<|im_end|>"},
};

// Templates transformers renders but whose history differs from the whole conversation's start
// (earlier reasoning dropped, a trailing end token): qtrain must refuse rather than guess.
const std::vector<RealTemplate> kPrefixInconsistent = {
    {"Qwen-Qwen3-0.6B.jinja", "", "<|im_end|>"},
    {"microsoft-Phi-3.5-mini-instruct.jinja", "<s>", "<|endoftext|>"},
};

json conversations() {
  return json::array({
      json::array({{{"role", "system"}, {"content", "You are a terse assistant."}},
                   {{"role", "user"}, {"content", "Hi there"}},
                   {{"role", "assistant"}, {"content", "Hello! How can I help?"}},
                   {{"role", "user"}, {"content", "  What is 2+2?\n"}},
                   {{"role", "assistant"}, {"content", "It is 4."}}}),
      json::array({{{"role", "system"}, {"content", "Answer in French.\nBe brief."}},
                   {{"role", "user"}, {"content", "Name a colour."}},
                   {{"role", "assistant"}, {"content", "Bleu"}},
                   {{"role", "user"}, {"content", "Another one, please."}},
                   {{"role", "assistant"}, {"content", " Rouge \n"}},
                   {{"role", "user"}, {"content", "And a number?"}},
                   {{"role", "assistant"}, {"content", "Trois, ou \"3\"."}}}),
      json::array({{{"role", "user"}, {"content", "Say yes."}},
                   {{"role", "assistant"}, {"content", "Yes."}},
                   {{"role", "user"}, {"content", "Say no."}},
                   {{"role", "assistant"}, {"content", "No."}}}),
  });
}

std::string jinja_dir() {
  return QTRAIN_JINJA_DIR;
}

std::map<std::string, std::string> special_tokens_of(const RealTemplate& t) {
  std::map<std::string, std::string> out;
  if (!t.bos.empty()) out["bos_token"] = t.bos;
  out["eos_token"] = t.eos;
  return out;
}

std::vector<ChatMessage> messages_of(const json& conversation) {
  std::vector<ChatMessage> out;
  for (const auto& m : conversation) out.push_back({m["role"], m["content"]});
  return out;
}

// transformers' renderings of every template x conversation
// (tests/reference/chat_template_render.py).
json reference_renderings(const std::vector<RealTemplate>& templates,
                          const testing::ScratchDir& dir) {
  json cases = {{"templates", json::array()}, {"conversations", conversations()}};
  for (const auto& t : templates) {
    cases["templates"].push_back(
        {{"name", t.file},
         {"source", testing::read_file(jinja_dir() + "/templates/" + t.file)},
         {"special_tokens", special_tokens_of(t)}});
  }
  testing::write_file(dir.file("cases.json"), cases.dump());
  std::string output;
  EXPECT_EQ(
      testing::run_reference_script("chat_template_render.py", {dir.file("cases.json")}, &output),
      0);
  return json::parse(output)["results"];
}

// A tokenizer_config.json holding `t`, so the template goes the data.template auto way.
std::string write_tokenizer_config(const RealTemplate& t, const testing::ScratchDir& dir,
                                   const std::string& name) {
  json config = {{"chat_template", testing::read_file(jinja_dir() + "/templates/" + t.file)}};
  for (const auto& [key, text] : special_tokens_of(t)) config[key] = text;
  const std::string path = dir.file(name + ".json");
  testing::write_file(path, config.dump());
  return path;
}

// Ids and labels of the rendered text up to the last span's end with a loss exactly on the spans,
// computed from the reference alone.
Example expected_example(const std::string& text, const json& spans, const ByteTokenizer& tok) {
  const size_t end = spans.back()[1].get<size_t>();
  Example out;
  for (const auto& segment : tok.split_at_atomic_tokens(std::string_view(text).substr(0, end))) {
    bool loss = false;
    for (const auto& span : spans) {
      loss = loss || (segment.begin >= span[0].get<size_t>() && segment.begin < span[1]);
    }
    auto push = [&](int64_t id) {
      out.ids.push_back(id);
      out.labels.push_back(loss ? id : kIgnoreLabel);
    };
    if (segment.id >= 0) {
      push(segment.id);
    } else {
      for (size_t i = segment.begin; i < segment.end; ++i) {
        loss = false;
        for (const auto& span : spans) {
          loss = loss || (i >= span[0].get<size_t>() && i < span[1].get<size_t>());
        }
        push(static_cast<unsigned char>(text[i]));
      }
    }
  }
  out.labels[0] = kIgnoreLabel;
  return out;
}

TEST(JinjaChatTemplate, RealTemplatesRenderAsTransformersAndMaskTheAssistantSpans) {
  QTRAIN_REQUIRE_JINJA_ENGINE();
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  const testing::ScratchDir dir("qtrain-jinja");
  const json results = reference_renderings(kTemplates, dir);
  ASSERT_EQ(results.size(), kTemplates.size() * conversations().size());
  int rendered = 0, with_system = 0;
  for (size_t t = 0; t < kTemplates.size(); ++t) {
    const RealTemplate& real = kTemplates[t];
    const std::string config = write_tokenizer_config(real, dir, "t" + std::to_string(t));
    const auto chat = JinjaChatTemplate::from_tokenizer_config(config);
    for (size_t c = 0; c < conversations().size(); ++c) {
      SCOPED_TRACE(real.file + ", conversation " + std::to_string(c));
      const json& ref = results[t * conversations().size() + c];
      const json conversation = conversations()[c];
      const auto messages = messages_of(conversation);
      ASSERT_TRUE(ref["error"].is_null()) << ref["error"];
      const std::string text = ref["text"];
      EXPECT_EQ(chat->render(messages, false), text);
      const RenderedChat ours = chat->render_for_training(messages);
      EXPECT_EQ(ours.text, text);
      ASSERT_FALSE(ref["spans"].is_null());
      std::vector<std::pair<size_t, size_t>> spans;
      for (const auto& s : ref["spans"]) spans.emplace_back(s[0], s[1]);
      EXPECT_EQ(ours.assistant_spans, spans);
      // Each span holds its assistant message's text (trimmed, as several templates trim it).
      size_t a = 0;
      for (const auto& m : conversation) {
        if (m["role"] != "assistant" || a >= spans.size()) continue;
        const std::string content = m["content"];
        const std::string core =
            content.substr(content.find_first_not_of(" \n"),
                           content.find_last_not_of(" \n") - content.find_first_not_of(" \n") + 1);
        EXPECT_NE(text.substr(spans[a].first, spans[a].second - spans[a].first).find(core),
                  std::string::npos)
            << "span " << a;
        ++a;
      }
      // Through data.template auto's path: format_record + build_examples, labels on the spans.
      const Record record{{{"messages", conversation}}, "chat.jsonl", 1};
      const ByteTokenizer tok(real.bos, real.eos);
      ExampleOptions options;
      options.max_seq_len = 1 << 20;
      // BOS as the template renders it (apply_chat_template adds none); when it does, the
      // tokenizer's BOS and the template's must not both appear.
      options.add_bos = !real.bos.empty() && text.rfind(real.bos, 0) == 0;
      options.add_eos = false;
      options.chat_template = "jinja:" + config;
      const auto examples = build_examples({record}, "chat", {}, tok, options);
      ASSERT_EQ(examples.size(), 1u);
      const Example want = expected_example(text, ref["spans"], tok);
      EXPECT_EQ(examples[0].ids, want.ids);
      EXPECT_EQ(examples[0].labels, want.labels);
      ++rendered;
      with_system += conversation[0]["role"] == "system";
    }
  }
  EXPECT_GE(rendered, 30);
  EXPECT_GE(with_system, 20);
}

TEST(JinjaChatTemplate, TemplatesThatRenderHistoryDifferentlyAreRefused) {
  QTRAIN_REQUIRE_JINJA_ENGINE();
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  const testing::ScratchDir dir("qtrain-jinja");
  const json results = reference_renderings(kPrefixInconsistent, dir);
  for (size_t t = 0; t < kPrefixInconsistent.size(); ++t) {
    const RealTemplate& real = kPrefixInconsistent[t];
    const auto chat = JinjaChatTemplate::from_tokenizer_config(
        write_tokenizer_config(real, dir, "p" + std::to_string(t)));
    const json& ref = results[t * conversations().size()];
    SCOPED_TRACE(real.file);
    ASSERT_TRUE(ref["error"].is_null()) << ref["error"];
    EXPECT_TRUE(ref["spans"].is_null());  // transformers' own renderings are not prefixes
    EXPECT_EQ(chat->render(messages_of(conversations()[0]), false), ref["text"]);
    try {
      chat->render_for_training(messages_of(conversations()[0]));
      ADD_FAILURE() << "expected the rendered-prefix method to refuse";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
      EXPECT_NE(std::string(e.what()).find("rendered-prefix"), std::string::npos) << e.what();
    }
  }
}

TEST(JinjaChatTemplate, RaiseExceptionIsARecordErrorWithTheTemplatesMessage) {
  QTRAIN_REQUIRE_JINJA_ENGINE();
  // Gemma 2's template has no system role.
  const std::string source =
      testing::read_file(jinja_dir() + "/templates/google-gemma-2-2b-it.jinja");
  const JinjaChatTemplate chat(source, {{"bos_token", "<bos>"}, {"eos_token", "<eos>"}}, "gemma");
  const auto with_system = messages_of(conversations()[0]);
  try {
    chat.render(with_system, false);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFormat);
    EXPECT_NE(std::string(e.what()).find("System role not supported"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(chat.render(messages_of(conversations()[2]), false),
            "<bos><start_of_turn>user\nSay yes.<end_of_turn>\n<start_of_turn>model\nYes."
            "<end_of_turn>\n<start_of_turn>user\nSay no.<end_of_turn>\n<start_of_turn>model\nNo."
            "<end_of_turn>\n");
}

TEST(JinjaChatTemplate, ConstructsTheEngineCannotRunAreRefusedByName) {
  QTRAIN_REQUIRE_JINJA_ENGINE();
  auto error_of = [](const std::string& source) -> std::string {
    try {
      const JinjaChatTemplate chat(source, {}, "model/tokenizer_config.json");
      chat.render({{"user", "hi"}, {"assistant", "yo"}}, false);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kUnsupported) << e.what();
      EXPECT_EQ(e.context().file, "model/tokenizer_config.json");
      return e.what();
    }
    return "";
  };
  EXPECT_NE(error_of("{% include 'header.jinja' %}").find("include"), std::string::npos);
  EXPECT_NE(error_of("{{ messages | frobnicate }}").find("frobnicate"), std::string::npos);
  // Jinja2 prints a list as its Python repr; this engine prints nothing, so no turn is found.
  try {
    const JinjaChatTemplate chat("{{ messages }}", {}, "m");
    chat.render_for_training({{"user", "hi"}, {"assistant", "yo"}});
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("as nothing"), std::string::npos) << e.what();
  }
}

TEST(JinjaChatTemplate, GenerationTagsKeepTheirWhitespaceControl) {
  QTRAIN_REQUIRE_JINJA_ENGINE();
  // A chatml template whose assistant content and footer sit in {% generation %} tags, written
  // with the tags' "-" trimming and trim_blocks newlines.
  const std::string source =
      "{%- for m in messages %}\n"
      "{{- '<|im_start|>' + m.role + '\\n' }}\n"
      "{%- if m.role == 'assistant' %}\n"
      "  {%- generation -%}\n"
      "     {{ m.content + '<|im_end|>' }}\n"
      "  {%- endgeneration %}\n"
      "{{ '\\n' }}"
      "{%- else %}\n"
      "{{- m.content + '<|im_end|>\\n' }}\n"
      "{%- endif %}\n"
      "{%- endfor %}";
  const JinjaChatTemplate chat(source, {{"eos_token", "<|im_end|>"}}, "t");
  EXPECT_TRUE(chat.has_generation_tags());
  const std::vector<ChatMessage> messages = {
      {"system", "S"}, {"user", "U"}, {"assistant", "A1"}, {"user", "V"}, {"assistant", "A2"}};
  const std::string want =
      "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
      "A1<|im_end|>\n<|im_start|>user\nV<|im_end|>\n<|im_start|>assistant\nA2<|im_end|>\n";
  EXPECT_EQ(chat.render(messages, false), want);
  const RenderedChat rendered = chat.render_for_training(messages);
  EXPECT_EQ(rendered.text, want);
  const size_t a1 = want.find("A1"), a2 = want.find("A2");
  const size_t footer = std::string("<|im_end|>").size();
  const std::vector<std::pair<size_t, size_t>> spans = {{a1, a1 + 2 + footer},
                                                        {a2, a2 + 2 + footer}};
  EXPECT_EQ(rendered.assistant_spans, spans);
  // The turns: prompts between the spans, responses without their EOS text (an id instead).
  const auto turns = chat_turns_of(rendered, "", "<|im_end|>");
  ASSERT_EQ(turns.size(), 2u);
  EXPECT_EQ(turns[0].prompt, want.substr(0, a1));
  EXPECT_EQ(turns[0].response, "A1");
  EXPECT_TRUE(turns[0].eos_after_response);
  EXPECT_EQ(turns[1].prompt, "\n<|im_start|>user\nV<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(turns[1].response, "A2");
}

TEST(JinjaChatTemplate, AutoNamesTheModelsTemplateWhenTheEngineIsBuiltIn) {
  const std::string gemma = "{{ '<start_of_turn>' }}";
  if (jinja_engine_available()) {
    EXPECT_EQ(model_chat_template_name(gemma, "m/tokenizer_config.json"),
              "jinja:m/tokenizer_config.json");
    EXPECT_TRUE(is_jinja_chat_template("jinja:m/tokenizer_config.json"));
  } else {
    try {
      model_chat_template_name(gemma, "m/tokenizer_config.json");
      ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
      EXPECT_NE(std::string(e.what()).find("fetch_jinja.sh"), std::string::npos);
    }
  }
  EXPECT_EQ(model_chat_template_name("<|im_start|>x<|im_end|>", "q"),
            jinja_engine_available() ? "jinja:q" : "chatml");
}

}  // namespace
}  // namespace qtrain
