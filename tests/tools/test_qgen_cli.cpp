// qgen end to end through the real binary: a model directory made by write_tiny_model, greedy
// output equal to the library's generate() (with LoRA and QA-LoRA adapters attached), chat
// prompts with the data pipeline's ids, and clear errors with the documented exit codes.
#include "data/byte_level.h"
#include "data/examples.h"
#include "data/sentencepiece_tokenizer.h"
#include "data/tokenizer.h"
#include "models/generate.h"
#include "models/hf_loader.h"
#include "models/tiny_model.h"
#include "peft/apply_lora.h"
#include "peft/apply_qalora.h"
#include "peft/peft_files.h"
#include "tests/support/test_support.h"
#include "trainer/precision_model.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>

namespace qtrain {
namespace {

namespace t = qtrain::testing;

std::string qgen() {
  return t::binary_dir() + "/tools/qgen";
}

namespace fs = std::filesystem;
using nlohmann::json;

// B starts at zero; random B makes the adapter change the output.
void randomize_b(const NamedAdapters& adapters) {
  at::manual_seed(11);
  at::NoGradGuard no_grad;
  for (const auto& [name, slot] : adapters) {
    for (auto& [tensor_name, tensor] : slot->adapter_tensors()) {
      if (tensor_name == "lora_B.weight") tensor.copy_(at::randn_like(tensor) * 0.5);
    }
  }
}

void write_lora_adapter(const std::string& model_dir, const std::string& out) {
  auto model = load_causal_lm(model_dir);
  LoraConfig config{.r = 4, .dtype = at::kFloat};
  auto adapters = apply_lora(*model, config, /*seed=*/1);
  randomize_b(adapters);
  save_peft_adapter(out, adapters, config, model_dir);
}

void write_qalora_adapter(const std::string& model_dir, const std::string& out) {
  auto model = load_model_at_precision(model_dir, "int4", at::kFloat, c10::kCPU, 32).model;
  LoraConfig config{.r = 4, .dtype = at::kFloat};
  auto adapters = apply_qalora(*model, config, 32, /*seed=*/1);
  randomize_b(adapters);
  save_peft_adapter(out, adapters, config, model_dir, at::kFloat,
                    {{"use_qalora", true}, {"qalora_group_size", 32}});
}

// A Qwen-style byte-level BPE tokenizer.json (ids 0..255 are the bytes, no BOS) with ChatML's
// special tokens, replacing the tiny model's SentencePiece one.
void use_chatml_bpe_tokenizer(const std::string& dir) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level_chars()[b]] = b;
  vocab["he"] = 256;
  vocab["ll"] = 257;
  json added = json::array();
  int64_t id = 258;
  for (const char* token : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}) {
    added.push_back({{"id", id++}, {"content", token}, {"special", true}, {"normalized", false}});
  }
  const json tokenizer = {
      {"version", "1.0"},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern", {{"Regex", R"( ?\p{L}+| ?\p{N}|\s+(?!\S)|\s+|[^\s\p{L}\p{N}]+)"}}},
           {"behavior", "Isolated"},
           {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", {"h e", "l l"}}}}};
  const json config = {{"bos_token", nullptr},
                       {"eos_token", "<|im_end|>"},
                       {"pad_token", "<|endoftext|>"},
                       {"chat_template",
                        "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + "
                        "message.content + '<|im_end|>' + '\\n' }}{%- endfor %}"}};
  fs::remove(dir + "/tokenizer.model");
  fs::remove(dir + "/special_tokens_map.json");
  t::write_file(dir + "/tokenizer.json", tokenizer.dump());
  t::write_file(dir + "/tokenizer_config.json", config.dump());
}

class QgenCliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new t::ScratchDir("qtrain-qgen");
    write_tiny_model({.arch = "llama", .preset = "micro", .seed = 3}, model_dir());
    write_lora_adapter(model_dir(), scratch_->file("lora"));
    write_qalora_adapter(model_dir(), scratch_->file("qalora"));
    t::run_command("cp -r '" + model_dir() + "' '" + scratch_->file("bpe") + "'", nullptr);
    use_chatml_bpe_tokenizer(scratch_->file("bpe"));
  }
  static void TearDownTestSuite() { delete scratch_; }
  static std::string model_dir() { return scratch_->file("model"); }
  static std::string file(const std::string& name) { return scratch_->file(name); }
  static t::ScratchDir* scratch_;
};
t::ScratchDir* QgenCliTest::scratch_ = nullptr;

// qgen's stdout (stderr dropped), expecting exit 0.
std::string qgen_stdout(const std::string& args) {
  std::string out;
  EXPECT_EQ(t::run_command("{ " + qgen() + " " + args + " 2>/dev/null; }", &out), 0) << args;
  return out;
}

// The ids after "qgen: <what>:" in --show-prompt's stderr.
std::vector<int64_t> shown_ids(const std::string& args, const std::string& what) {
  std::string out;
  EXPECT_EQ(t::run_command(qgen() + " " + args + " --show-prompt -n 0", &out), 0) << out;
  const std::string marker = "qgen: " + what + ":";
  const size_t at = out.find(marker);
  if (at == std::string::npos) {
    ADD_FAILURE() << "no '" << marker << "' in\n" << out;
    return {};
  }
  std::istringstream line(out.substr(at + marker.size(), out.find('\n', at) - at));
  std::vector<int64_t> ids;
  for (int64_t id; line >> id;) ids.push_back(id);
  return ids;
}

// The ids the data pipeline puts before the (first) response of `record`.
std::vector<int64_t> pipeline_prompt_ids(const std::string& model_dir, const std::string& record,
                                         const std::string& format, const std::string& chat) {
  const auto tokenizer = load_tokenizer(model_dir);
  ExampleOptions options;
  options.add_bos = tokenizer->add_bos_default();
  options.chat_template = chat;
  const Example example =
      build_examples({{json::parse(record), "r.jsonl", 1}}, format, {}, *tokenizer, options)[0];
  size_t n = 0;
  while (n < example.ids.size() && example.labels[n] == kIgnoreLabel) ++n;
  return {example.ids.begin(), example.ids.begin() + n};
}

TEST_F(QgenCliTest, GreedyOutputIsTheLibrarysContinuation) {
  std::string out;
  const std::string prompt = "Permission is hereby granted";
  int rc = t::run_command("{ " + qgen() + " '" + model_dir() + "' --prompt '" + prompt +
                              "' --precision fp32 --max-new-tokens 12 2>/dev/null; }",
                          &out);
  ASSERT_EQ(rc, 0) << out;
  auto tokenizer = SentencePieceTokenizer::load(model_dir() + "/tokenizer.model");
  auto model = load_causal_lm(model_dir());
  auto ids = tokenizer.encode(prompt, /*add_bos=*/true);
  GenerateOptions greedy{.max_new_tokens = 12, .stop_ids = model->config().eos_token_ids};
  const std::string expected = prompt + tokenizer.decode(generate(*model, ids, greedy)) + "\n";
  EXPECT_EQ(out, expected);
}

TEST_F(QgenCliTest, SamplingIsReproducibleBySeed) {
  auto run = [&](int seed) {
    std::string out;
    const std::string cmd = "{ " + qgen() + " '" + model_dir() +
                            "' -p 'The' -n 16 -t 1.0 --top-p 0.9 --seed " + std::to_string(seed) +
                            " 2>/dev/null; }";
    EXPECT_EQ(t::run_command(cmd, &out), 0) << out;
    return out;
  };
  EXPECT_EQ(run(5), run(5));
  EXPECT_NE(run(5), run(6));
}

std::string quoted(const std::string& text) {
  return "'" + text + "'";
}

// prompt + the greedy continuation of `model`, as qgen --prompt prints it.
std::string library_continuation(CausalLM& model, const std::string& model_dir,
                                 const std::string& prompt, int64_t n) {
  auto tokenizer = SentencePieceTokenizer::load(model_dir + "/tokenizer.model");
  GenerateOptions greedy{.max_new_tokens = n, .stop_ids = model.config().eos_token_ids};
  return prompt + tokenizer.decode(generate(model, tokenizer.encode(prompt, true), greedy)) + "\n";
}

TEST_F(QgenCliTest, AdapterOutputIsTheLibrarysWithTheAdapterAttached) {
  const std::string prompt = "Permission is hereby granted";
  const std::string args = " -p '" + prompt + "' -n 12";
  const LoadedAdapter adapter = load_peft_adapter(file("lora"));
  auto fp32 = load_causal_lm(model_dir());
  const std::string base = library_continuation(*fp32, model_dir(), prompt, 12);
  attach_peft_adapter(*fp32, adapter);
  const std::string tuned = library_continuation(*fp32, model_dir(), prompt, 12);
  ASSERT_NE(tuned, base) << "the adapter should change the greedy output";
  EXPECT_EQ(qgen_stdout(quoted(model_dir()) + " --adapter " + quoted(file("lora")) +
                        " --precision fp32" + args),
            tuned);

  // The default precision is bf16 weights computed in float32; the adapter names its base.
  auto bf16 = load_model_at_precision(model_dir(), "bf16", at::kFloat, c10::kCPU).model;
  attach_peft_adapter(*bf16, adapter);
  EXPECT_EQ(qgen_stdout("--adapter " + quoted(file("lora")) + args),
            library_continuation(*bf16, model_dir(), prompt, 12));
}

TEST_F(QgenCliTest, QaLoraAdapterRunsOnItsInt4BaseOnly) {
  const std::string prompt = "The";
  auto int4 = load_model_at_precision(model_dir(), "int4", at::kFloat, c10::kCPU, 32).model;
  attach_peft_adapter(*int4, load_peft_adapter(file("qalora")));
  EXPECT_EQ(qgen_stdout(quoted(model_dir()) + " --adapter " + quoted(file("qalora")) + " -p '" +
                        prompt + "' -n 10"),
            library_continuation(*int4, model_dir(), prompt, 10));

  std::string out;
  EXPECT_EQ(t::run_command(
                qgen() + " --adapter " + quoted(file("qalora")) + " -p x --precision nf4", &out),
            2)
      << out;
  EXPECT_NE(out.find("QA-LoRA"), std::string::npos) << out;
  EXPECT_NE(out.find("--precision int4"), std::string::npos) << out;
}

TEST_F(QgenCliTest, ChatPromptIdsAreTheDataPipelines) {
  const std::string conversation = R"({"messages": [{"role": "system", "content": "Be brief."},
      {"role": "user", "content": "Name a day."}, {"role": "assistant", "content": "Monday"}]})";
  const std::string chat = " --chat 'Name a day.' --system 'Be brief.'";
  // tokenizer.json BPE; auto reads chatml from tokenizer_config.json.
  const std::string bpe = quoted(file("bpe"));
  const auto ids = shown_ids(bpe + chat, "prompt ids");
  EXPECT_EQ(ids, pipeline_prompt_ids(file("bpe"), conversation, "chat", "chatml"));
  EXPECT_EQ(ids, shown_ids(bpe + chat + " --template chatml", "prompt ids"));
  const auto stops = shown_ids(bpe + chat, "stop ids");
  EXPECT_NE(std::find(stops.begin(), stops.end(), 260), stops.end()) << "<|im_end|> stops";
  // SentencePiece: llama2 folds the system message into the first [INST].
  EXPECT_EQ(shown_ids(quoted(model_dir()) + chat + " --template llama2", "prompt ids"),
            pipeline_prompt_ids(model_dir(), conversation, "chat", "llama2"));
  EXPECT_EQ(
      shown_ids(quoted(model_dir()) + " --chat 'Name a day.' --template alpaca", "prompt ids"),
      pipeline_prompt_ids(model_dir(), R"({"instruction": "Name a day.", "output": "Monday"})",
                          "alpaca", ""));
}

TEST_F(QgenCliTest, RunDirectoryNamesBasePrecisionAndTemplate) {
  const std::string run = file("run");
  fs::create_directories(run);
  fs::copy(file("lora"), run + "/adapter");
  t::write_file(run + "/recipe.yaml", "model:\n  path: " + model_dir() +
                                          "\n  dtype: float32\nquantization:\n  type: none\n"
                                          "data:\n  path: train.jsonl\n  format: alpaca\n"
                                          "output:\n  dir: " +
                                          run + "\n");
  const std::string chat = " --chat 'Name a day.'";
  EXPECT_EQ(
      shown_ids(quoted(run) + chat, "prompt ids"),
      pipeline_prompt_ids(model_dir(), R"({"instruction": "Name a day.", "output": "Monday"})",
                          "alpaca", ""));
  // quantization none with model.dtype float32: an fp32 base.
  const std::string expected =
      qgen_stdout(quoted(model_dir()) + " --adapter " + quoted(file("lora")) + chat +
                  " --template alpaca --precision fp32 -n 8");
  EXPECT_EQ(qgen_stdout(quoted(run) + chat + " -n 8"), expected);
  EXPECT_EQ(qgen_stdout("--adapter " + quoted(run) + chat + " -n 8"), expected);
}

struct BadRun {
  std::string args;
  int exit_code;
  std::string message;
};

TEST_F(QgenCliTest, BadInputGivesClearErrorsAndExitCodes) {
  t::ScratchDir broken("qtrain-qgen-broken");
  t::run_command("cp -r '" + model_dir() + "/.' '" + broken.path() + "'", nullptr);
  t::write_file(broken.file("model.safetensors"), "not a safetensors file");
  t::ScratchDir other("qtrain-qgen-other");  // another width: the adapter does not fit
  write_tiny_model({.preset = "micro", .overwrite = true, .hidden_size = 32}, other.path());
  const std::vector<BadRun> cases = {
      {"'" + model_dir() + "'", 2, "--prompt"},
      {"'" + model_dir() + "' -p x --top-p 2", 2, "top-p"},
      {"'" + model_dir() + "' -p x --dtype float8", 3, "float8"},
      {"/nonexistent/model -p x", 4, "/nonexistent/model"},
      {"'" + broken.path() + "' -p x", 5, "model.safetensors"},
      {"'" + model_dir() + "' -p x -n 5000", 2, "max_position_embeddings"},
      {"-p x", 2, "no model"},
      {"'" + model_dir() + "' -p x -c y", 2, "--chat"},
      {"'" + model_dir() + "' -p x --template chatml", 2, "--chat"},
      {"'" + model_dir() + "' -c x --template foo", 2, "foo"},
      {"'" + model_dir() + "' -c x --precision int3", 2, "int3"},
      {"'" + model_dir() + "' -c x --system s --template mistral", 2, "system"},
      {"'" + model_dir() + "' -c x", 5, "chat_template"},
      {"'" + other.path() + "' --adapter '" + file("lora") + "' -p x", 6, "lora"},
  };
  for (const auto& c : cases) {
    std::string out;
    EXPECT_EQ(t::run_command(qgen() + " " + c.args, &out), c.exit_code) << c.args << "\n" << out;
    EXPECT_NE(out.find(c.message), std::string::npos) << c.args << "\n" << out;
  }
}

}  // namespace
}  // namespace qtrain
