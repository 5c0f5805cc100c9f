// HF PEFT adapter directories without Python: what save_peft_adapter writes (keys, shapes,
// dtype, adapter_config.json fields), the save -> load -> attach round trip, and the errors of
// load_peft_adapter / attach_peft_adapter on bad or mismatched input.
#include "core/error.h"
#include "formats/safetensors/safetensors.h"
#include "peft/apply_lora.h"
#include "peft/lora_linear.h"
#include "peft/peft_files.h"
#include "tests/models/random_model.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>

namespace qtrain {
namespace {

namespace t = qtrain::testing;
using nlohmann::json;

LoraConfig test_config() {
  LoraConfig c;
  c.r = 4;
  c.alpha = 8;
  c.dropout = 0.05;
  c.dtype = at::kFloat;
  c.target_modules = {"q_proj", "v_proj", "down_proj"};
  return c;
}

void randomize_b(const NamedAdapters& adapters, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (const auto& [name, adapter] : adapters) {
    auto b = adapter->adapter_tensors()[1];
    adapter->load_adapter_tensor(b.first, at::randn(b.second.sizes(), gen) * 0.1);
  }
}

ForwardInputs inputs() {
  ForwardInputs in;
  in.input_ids = at::arange(12, at::kLong).reshape({2, 6}) * 5 % 97;
  return in;
}

// Writes a saved adapter of the small llama to `dir`; returns the model.
std::shared_ptr<CausalLM> saved_adapter(const std::string& dir, const LoraConfig& config) {
  auto model = t::random_model(t::small_config("llama"), 1);
  auto adapters = apply_lora(*model, config, 2);
  randomize_b(adapters, 3);
  save_peft_adapter(dir, adapters, config, "tiny/llama");
  return model;
}

template <typename F>
Error error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "no qtrain::Error thrown";
  return Error(ErrorKind::kInternal, "none");
}

TEST(PeftFiles, SavedFilesHavePeftKeysShapesAndConfig) {
  t::ScratchDir scratch;
  const std::string dir = scratch.file("adapter");
  saved_adapter(dir, test_config());

  auto file = SafetensorsFile::open(dir + "/adapter_model.safetensors");
  EXPECT_EQ(file->metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  EXPECT_EQ(file->names().size(), 12u);  // 2 layers x 3 modules x (A, B)
  const auto& q_a = file->info("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
  EXPECT_EQ(q_a.shape, (std::vector<int64_t>{4, 32}));
  EXPECT_EQ(q_a.dtype, "F32");
  const auto& v_b = file->info("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight");
  EXPECT_EQ(v_b.shape, (std::vector<int64_t>{16, 4}));  // 2 kv heads x head_dim 8
  const auto& down_a = file->info("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight");
  EXPECT_EQ(down_a.shape, (std::vector<int64_t>{4, 48}));

  const std::string text = t::read_file(dir + "/adapter_config.json");
  json j = json::parse(text);
  EXPECT_EQ(j["peft_type"], "LORA");
  EXPECT_EQ(j["task_type"], "CAUSAL_LM");
  EXPECT_EQ(j["r"], 4);
  EXPECT_TRUE(j["lora_alpha"].is_number_integer());
  EXPECT_EQ(j["lora_alpha"], 8);
  EXPECT_DOUBLE_EQ(j["lora_dropout"].get<double>(), 0.05);
  EXPECT_EQ(j["use_rslora"], false);
  EXPECT_EQ(j["use_dora"], false);
  EXPECT_EQ(j["bias"], "none");
  EXPECT_EQ(j["inference_mode"], true);
  EXPECT_EQ(j["base_model_name_or_path"], "tiny/llama");
  EXPECT_EQ(j["target_modules"], json({"down_proj", "q_proj", "v_proj"}));
  // json.dumps(indent=2, sort_keys=True) layout.
  EXPECT_EQ(text.rfind("{\n  \"alpha_pattern\": {},\n  \"auto_mapping\": null,\n", 0), 0u) << text;
  EXPECT_NE(text.back(), '\n');
}

TEST(PeftFiles, TargetModulesWrittenAsWrapped) {
  t::ScratchDir scratch;
  LoraConfig all = test_config();
  all.target_modules = {"all-linear"};
  saved_adapter(scratch.file("all"), all);
  EXPECT_EQ(json::parse(t::read_file(scratch.file("all/adapter_config.json")))["target_modules"],
            json({"down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"}));

  LoraConfig dotted = test_config();
  dotted.target_modules = {"model.layers.1.self_attn.q_proj"};
  saved_adapter(scratch.file("dotted"), dotted);
  EXPECT_EQ(json::parse(t::read_file(scratch.file("dotted/adapter_config.json")))["target_modules"],
            json({"model.layers.1.self_attn.q_proj"}));

  LoraConfig regex = test_config();
  regex.target_regex = R"(.*\.0\.mlp\..*)";
  regex.rslora = true;
  saved_adapter(scratch.file("regex"), regex);
  LoadedAdapter loaded = load_peft_adapter(scratch.file("regex"));
  EXPECT_EQ(loaded.config.target_regex, regex.target_regex);
  EXPECT_TRUE(loaded.config.rslora);
  EXPECT_EQ(loaded.tensors.size(), 3u);
}

TEST(PeftFiles, RoundTripGivesTheSameLogits) {
  t::ScratchDir scratch;
  const std::string dir = scratch.file("adapter");
  auto trained = saved_adapter(dir, test_config());
  trained->eval();  // dropout 0.05 acts only in training
  torch::NoGradGuard no_grad;
  at::Tensor expected = trained->forward(inputs());

  LoadedAdapter loaded = load_peft_adapter(dir);
  EXPECT_EQ(loaded.config.r, 4);
  EXPECT_DOUBLE_EQ(loaded.config.alpha, 8);
  EXPECT_DOUBLE_EQ(loaded.config.dropout, 0.05);
  EXPECT_EQ(loaded.config.dtype, at::kFloat);
  EXPECT_EQ(loaded.base_model_name_or_path, "tiny/llama");
  EXPECT_EQ(loaded.tensors.size(), 6u);

  auto fresh = t::random_model(t::small_config("llama"), 1);
  at::Tensor base_logits = fresh->forward(inputs());
  auto adapters = attach_peft_adapter(*fresh, loaded);
  ASSERT_EQ(adapters.size(), 6u);
  EXPECT_EQ(adapters[0].first, "model.layers.0.self_attn.q_proj");
  fresh->eval();
  at::Tensor logits = fresh->forward(inputs());
  EXPECT_TRUE(at::equal(logits, expected));
  EXPECT_GT(t::max_abs_diff(logits, base_logits), 1e-3);  // the adapter matters

  // bf16 on disk: converted on save, read back as bf16.
  save_peft_adapter(scratch.file("bf16"), adapters, loaded.config, "", at::kBFloat16);
  LoadedAdapter half = load_peft_adapter(scratch.file("bf16"));
  EXPECT_EQ(half.config.dtype, at::kBFloat16);
  EXPECT_TRUE(
      json::parse(t::read_file(scratch.file("bf16/adapter_config.json")))["base_model_name_or_path"]
          .is_null());
}

TEST(PeftFiles, MissingFilesAndLegacyBin) {
  t::ScratchDir scratch;
  Error e = error_of([&] { load_peft_adapter(scratch.file("nope")); });
  EXPECT_EQ(e.kind(), ErrorKind::kIo);
  EXPECT_EQ(e.context().file, scratch.file("nope"));

  const std::string dir = scratch.file("adapter");
  saved_adapter(dir, test_config());
  std::filesystem::rename(dir + "/adapter_model.safetensors", dir + "/adapter_model.bin");
  e = error_of([&] { load_peft_adapter(dir); });
  EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
  EXPECT_NE(std::string(e.what()).find("safetensors"), std::string::npos);
  std::filesystem::remove(dir + "/adapter_model.bin");
  e = error_of([&] { load_peft_adapter(dir); });
  EXPECT_EQ(e.kind(), ErrorKind::kIo);
  EXPECT_EQ(e.context().file, dir + "/adapter_model.safetensors");

  std::filesystem::remove(dir + "/adapter_config.json");
  e = error_of([&] { load_peft_adapter(dir); });
  EXPECT_EQ(e.kind(), ErrorKind::kIo);
  EXPECT_EQ(e.context().file, dir + "/adapter_config.json");
}

TEST(PeftFiles, BadConfigsNameFileAndField) {
  t::ScratchDir scratch;
  const std::string dir = scratch.file("adapter");
  saved_adapter(dir, test_config());
  const std::string config_path = dir + "/adapter_config.json";
  const json good = json::parse(t::read_file(config_path));

  t::write_file(config_path, "{\"peft_type\": \"LORA\",\n  \"r\": 4,,}");
  Error e = error_of([&] { load_peft_adapter(dir); });
  EXPECT_EQ(e.kind(), ErrorKind::kFormat);
  EXPECT_EQ(e.context().file, config_path);

  const std::vector<std::tuple<std::string, json, ErrorKind>> cases = {
      {"peft_type", "IA3", ErrorKind::kUnsupported},
      {"use_dora", true, ErrorKind::kUnsupported},
      {"fan_in_fan_out", true, ErrorKind::kUnsupported},
      {"bias", "all", ErrorKind::kUnsupported},
      {"modules_to_save", json({"lm_head"}), ErrorKind::kUnsupported},
      {"rank_pattern", json({{"q_proj", 8}}), ErrorKind::kUnsupported},
      {"task_type", "SEQ_CLS", ErrorKind::kUnsupported},
      {"r", "four", ErrorKind::kConfig},
      {"lora_alpha", "8", ErrorKind::kConfig},
      {"use_rslora", 1, ErrorKind::kConfig},
      {"target_modules", 3, ErrorKind::kConfig},
  };
  for (const auto& [field, value, kind] : cases) {
    json j = good;
    j[field] = value;
    t::write_file(config_path, j.dump(2));
    e = error_of([&] { load_peft_adapter(dir); });
    EXPECT_EQ(e.kind(), kind) << field;
    EXPECT_EQ(e.context().field, field);
    EXPECT_EQ(e.context().file, config_path);
  }

  json j = good;
  j["r"] = 8;  // the tensors have rank 4
  t::write_file(config_path, j.dump(2));
  e = error_of([&] { load_peft_adapter(dir); });
  EXPECT_EQ(e.kind(), ErrorKind::kShape);
  EXPECT_EQ(e.context().file, dir + "/adapter_model.safetensors");
  EXPECT_NE(e.context().tensor.find("lora_"), std::string::npos);

  // Unknown keys are ignored, missing ones take PEFT's defaults (lora_alpha 8, dropout 0).
  t::write_file(config_path, R"({"peft_type": "LORA", "r": 4, "some_future_key": [1]})");
  LoadedAdapter minimal = load_peft_adapter(dir);
  EXPECT_DOUBLE_EQ(minimal.config.alpha, 8);
  EXPECT_DOUBLE_EQ(minimal.config.dropout, 0);
  EXPECT_EQ(minimal.config.target_modules.size(), 6u);  // the file's modules
}

TEST(PeftFiles, BadTensorsNameTheTensor) {
  t::ScratchDir scratch;
  const std::string dir = scratch.file("adapter");
  saved_adapter(dir, test_config());
  const std::string weights = dir + "/adapter_model.safetensors";
  auto original = SafetensorsFile::open(weights);
  NamedTensors tensors;
  for (const auto& name : original->names())
    tensors.emplace_back(name, original->tensor(name).clone());
  original.reset();

  NamedTensors dora = tensors;
  dora.emplace_back("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
                    at::ones({32}));
  write_safetensors(weights, dora);
  Error e = error_of([&] { load_peft_adapter(dir); });
  EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
  EXPECT_EQ(e.context().tensor,
            "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector");

  // Issue 24: a NaN in adapter.init_from's weights used to surface as a diverged loss.
  NamedTensors poisoned = tensors;
  poisoned[1].second = poisoned[1].second.clone();
  poisoned[1].second.view({-1})[0] = std::nan("");
  write_safetensors(weights, poisoned);
  e = error_of([&] { load_peft_adapter(dir); });
  EXPECT_EQ(e.kind(), ErrorKind::kFormat);
  EXPECT_EQ(e.context().tensor, tensors[1].first);
  EXPECT_EQ(e.context().file, weights);

  NamedTensors lonely(tensors.begin() + 1, tensors.end());  // drops one lora_A
  write_safetensors(weights, lonely);
  e = error_of([&] { load_peft_adapter(dir); });
  EXPECT_EQ(e.kind(), ErrorKind::kShape);
  EXPECT_EQ(e.context().tensor, tensors[0].first);
}

TEST(PeftFiles, AttachToAnotherModelSizeFailsBeforeChangingTheModel) {
  t::ScratchDir scratch;
  const std::string dir = scratch.file("adapter");
  saved_adapter(dir, test_config());
  LoadedAdapter loaded = load_peft_adapter(dir);

  ModelConfig wider = t::small_config("llama");
  wider.intermediate_size = 64;  // down_proj A would be [4, 64]
  auto other = t::random_model(wider, 1);
  Error e = error_of([&] { attach_peft_adapter(*other, loaded); });
  EXPECT_EQ(e.kind(), ErrorKind::kShape);
  EXPECT_EQ(e.context().tensor, "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight");
  EXPECT_EQ(e.context().file, dir + "/adapter_model.safetensors");
  for (const auto& [name, slot] : other->named_linears()) {
    EXPECT_EQ(std::dynamic_pointer_cast<AdapterSlot>(slot), nullptr) << name;
  }

  ModelConfig shallow = t::small_config("llama");
  shallow.num_hidden_layers = 1;
  auto one_layer = t::random_model(shallow, 1);
  e = error_of([&] { attach_peft_adapter(*one_layer, loaded); });
  EXPECT_EQ(e.kind(), ErrorKind::kShape);
  EXPECT_NE(e.context().tensor.find("model.layers.1."), std::string::npos);

  auto same = t::random_model(t::small_config("llama"), 1);
  attach_peft_adapter(*same, loaded);
  e = error_of([&] { attach_peft_adapter(*same, loaded); });
  EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
}

}  // namespace
}  // namespace qtrain
