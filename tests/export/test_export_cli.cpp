// qexport end to end: real qtrain runs (LoRA on an NF4 base, QA-LoRA on an INT4 base) exported in
// every format through the real binary, then loaded by the implementations users load them with
// (tests/reference/check_exports.py: transformers, peft, transformers + bitsandbytes, a GPTQ
// v1 dequantizer) and compared with qtrain's own forward pass of base + adapter.
#include "data/tiny_instruct.h"
#include "export/export_formats.h"
#include "formats/gguf/gguf_mix.h"
#include "formats/gptq/gptq_layout.h"
#include "formats/safetensors/safetensors.h"
#include "models/hf_loader.h"
#include "models/int4_linear_slot.h"
#include "models/int4_loader.h"
#include "models/quantized_loader.h"
#include "peft/peft_files.h"
#include "peft/qalora_linear.h"
#include "tests/support/test_support.h"
#include "trainer/recipe/recipe.h"
#include "trainer/training_model.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace qtrain {
namespace {
namespace fs = std::filesystem;

std::string tool(const std::string& name) {
  return testing::binary_dir() + "/tools/" + name;
}

std::string recipe_text(const std::string& data, const std::string& out, bool qalora) {
  const std::string quant = qalora ? "  type: int4\n  group_size: 32\n" : "  type: nf4\n";
  const std::string adapter = qalora ? "  type: qalora\n" : "  type: lora\n";
  return "model:\n  path: builtin:micro\n  dtype: float32\n  device: cpu\nquantization:\n" + quant +
         "adapter:\n" + adapter +
         "  r: 8\n  alpha: 16\n  dropout: 0.0\n  dtype: float32\n"
         "data:\n  path: " +
         data +
         "\n  max_seq_len: 128\n  eval_fraction: 0.1\n"
         "training:\n  micro_batch_size: 8\n  grad_accum_steps: 1\n  max_steps: 12\n"
         "  lr: 2.0e-2\n  optimizer: adamw\n  seed: 3\n"
         "output:\n  dir: " +
         out + "\n  tensorboard: false\n" + (qalora ? "" : "  export: [gguf:q4_0]\n");
}

// Everything the tests compare, made once: two runs, their exports, the references' logits.
class ExportCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::ScratchDir("qtrain-export-cli");
    setenv("QTRAIN_CACHE_DIR", (testing::binary_dir() + "/test-cache").c_str(), 1);
    write_tiny_instruct_dataset(dir_->file("data.jsonl"), 96, 5);
    for (bool qalora : {false, true}) {
      const std::string name = qalora ? "qalora" : "lora";
      testing::write_file(dir_->file(name + ".yaml"),
                          recipe_text(dir_->file("data.jsonl"), dir_->file("run-" + name), qalora));
      std::string out;
      const int code =
          testing::run_command(tool("qtrain") + " " + dir_->file(name + ".yaml"), &out);
      ASSERT_EQ(code, 0) << out;
    }
    exports_ok_ = true;
    struct Export {
      std::string run, format, out, extra;
    };
    const Export exports[] = {
        {"lora", "adapter", "adapter", ""},
        {"lora", "merged-bf16", "merged-bf16", ""},
        {"lora", "merged-fp16", "merged-fp16", ""},
        {"lora", "merged-bf16", "merged-trained", "--base-weights trained --max-shard-size 100K"},
        {"lora", "nf4", "nf4", ""},
        {"qalora", "gptq-int4", "gptq", ""},
        {"qalora", "merged-bf16", "qalora-merged", "--base-weights trained"},
        {"lora", "gguf", "merged-f16.gguf", "--gguf-type f16"},
    };
    for (const Export& e : exports) {
      std::string out;
      const int code =
          testing::run_command(tool("qexport") + " " + dir_->file("run-" + e.run) + " -f " +
                                   e.format + " -o " + dir_->file(e.out) + " " + e.extra,
                               &out);
      EXPECT_EQ(code, 0) << e.format << ": " << out;
      exports_ok_ = exports_ok_ && code == 0;
      if (e.format == "gptq-int4") gptq_report_ = out;
      if (e.format == "gguf") gguf_report_ = out;
    }
    model_dir_ = resolve_model_dir("builtin:micro");
    // Fixed inputs: the rounding bounds below depend on them, so every run checks the same ones.
    at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(/*seed_in=*/11);
    ids_ = at::randint(3, 300, {2, 24}, generator, at::TensorOptions().dtype(at::kLong));
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

  // The references' logits, computed once for all tests.
  static const std::map<std::string, at::Tensor>& references() {
    static std::map<std::string, at::Tensor> refs;
    if (!refs.empty() || testing::reference_python().empty()) return refs;
    nlohmann::json inputs;
    inputs["input_ids"] = nlohmann::json::array();
    for (int64_t b = 0; b < ids_.size(0); ++b) {
      std::vector<int64_t> row(ids_[b].data_ptr<int64_t>(),
                               ids_[b].data_ptr<int64_t>() + ids_.size(1));
      inputs["input_ids"].push_back(row);
    }
    testing::write_file(dir_->file("inputs.json"), inputs.dump());
    std::string out;
    const int code = testing::run_reference_script("check_exports.py",
                                                   {dir_->file("inputs.json"),
                                                    dir_->file("refs.safetensors"),
                                                    "--merged",
                                                    "bf16",
                                                    dir_->file("merged-bf16"),
                                                    "--merged",
                                                    "fp16",
                                                    dir_->file("merged-fp16"),
                                                    "--merged",
                                                    "trained",
                                                    dir_->file("merged-trained"),
                                                    "--peft",
                                                    model_dir_,
                                                    dir_->file("adapter"),
                                                    "--nf4",
                                                    dir_->file("nf4"),
                                                    "--gptq",
                                                    dir_->file("gptq"),
                                                    "--merged",
                                                    "qalora",
                                                    dir_->file("qalora-merged")},
                                                   &out);
    EXPECT_EQ(code, 0) << out;
    if (code != 0) return refs;
    const CheckpointReader reader = CheckpointReader::open_file(dir_->file("refs.safetensors"));
    for (const std::string& name : reader.names()) refs[name] = reader.tensor(name).clone();
    return refs;
  }

  static at::Tensor logits(CausalLM& model) {
    at::NoGradGuard no_grad;
    model.eval();
    return model.forward({.input_ids = ids_});
  }

  // qtrain's model: the base loaded as `kind` says plus the run's adapter.
  static at::Tensor qtrain_logits(const std::string& run, const std::string& kind,
                                  bool with_adapter = true) {
    std::shared_ptr<CausalLM> model;
    if (kind == "dense") {
      model = load_causal_lm(model_dir_, {.dtype = at::kFloat});
    } else if (kind == "nf4") {
      QuantizedLoadOptions options;
      options.dtype = at::kFloat;
      options.quant.type = QuantType::kNF4;
      options.quant.blocksize = 64;
      options.quant.double_quant = true;
      model = load_quantized_causal_lm(model_dir_, options);
    } else {
      model = load_int4_causal_lm(model_dir_, {.dtype = at::kFloat, .group_size = 32});
    }
    if (with_adapter)
      attach_peft_adapter(*model, load_peft_adapter(dir_->file("run-" + run) + "/adapter"));
    return logits(*model);
  }

  static double max_diff(const at::Tensor& a, const at::Tensor& b) {
    return (a - b).abs().max().item<double>();
  }

  static testing::ScratchDir* dir_;
  static bool exports_ok_;
  static std::string gptq_report_;
  static std::string gguf_report_;
  static std::string model_dir_;
  static at::Tensor ids_;
};

testing::ScratchDir* ExportCli::dir_ = nullptr;
bool ExportCli::exports_ok_ = false;
std::string ExportCli::gptq_report_;
std::string ExportCli::gguf_report_;
std::string ExportCli::model_dir_;
at::Tensor ExportCli::ids_;

#define NEED_REFERENCES()            \
  QTRAIN_REQUIRE_REFERENCE_PYTHON(); \
  ASSERT_TRUE(exports_ok_);          \
  const auto& refs = references();   \
  ASSERT_FALSE(refs.empty())

TEST_F(ExportCli, MergedExportsLoadInTransformersWithQtrainsLogits) {
  NEED_REFERENCES();
  const at::Tensor expected = qtrain_logits("lora", "dense");
  const at::Tensor base_only = qtrain_logits("lora", "dense", /*with_adapter=*/false);
  const double effect = max_diff(expected, base_only);
  const double scale = expected.abs().max().item<double>();
  const double bf16 = max_diff(refs.at("merged.bf16"), expected);
  const double fp16 = max_diff(refs.at("merged.fp16"), expected);
  std::printf("adapter effect %.4g, |logits| max %.4g; merged-bf16 diff %.4g, merged-fp16 %.4g\n",
              effect, scale, bf16, fp16);
  ASSERT_GT(effect, 0.05) << "the run did not learn enough for the merge to be visible";
  // The same exported files in qtrain and in transformers, both computing in float32: equal up
  // to summation order.
  for (const char* format : {"bf16", "fp16"}) {
    const std::string export_dir = dir_->file(std::string("merged-") + format);
    const std::shared_ptr<CausalLM> exported = load_causal_lm(export_dir, {.dtype = at::kFloat});
    EXPECT_LT(max_diff(logits(*exported), refs.at(std::string("merged.") + format)), 1e-5 * scale)
        << format;
  }
  // Every weight is rounded once to 8 (bf16) or 11 (fp16) significant bits; through two layers
  // that moves logits by some units of the format's epsilon times their magnitude (up to ~10
  // units over runs with random inputs).
  EXPECT_LT(bf16, 16 * 0x1p-8 * scale);
  EXPECT_LT(fp16, 16 * 0x1p-11 * scale);
  EXPECT_LT(bf16, effect / 4) << "the merge must carry the adapter, not just the base";
}

TEST_F(ExportCli, TrainedBaseMergeReproducesTheQuantizedModel) {
  NEED_REFERENCES();
  const at::Tensor expected = qtrain_logits("lora", "nf4");
  const at::Tensor original = qtrain_logits("lora", "dense");
  const double scale = expected.abs().max().item<double>();
  const double trained = max_diff(refs.at("merged.trained"), expected);
  std::printf(
      "merged (trained base) vs qtrain nf4+LoRA: %.4g; original-base merge differs from "
      "it by %.4g\n",
      trained, max_diff(original, expected));
  EXPECT_LT(trained, 8 * 0x1p-8 * scale);
  // The shards were capped at 100 KiB: a multi-shard checkpoint with an index.
  EXPECT_TRUE(fs::exists(dir_->file("merged-trained/model.safetensors.index.json")));
}

TEST_F(ExportCli, AdapterExportLoadsInPeft) {
  NEED_REFERENCES();
  const double diff = max_diff(refs.at("peft"), qtrain_logits("lora", "dense"));
  std::printf("peft vs qtrain (dense base + LoRA): %.3g\n", diff);
  EXPECT_LT(diff, 1e-4);
}

TEST_F(ExportCli, Nf4ExportLoadsInBitsandbytesLikeInQtrain) {
  NEED_REFERENCES();
  QuantizedLoadOptions options;
  options.dtype = at::kFloat;
  const auto model = load_quantized_causal_lm(dir_->file("nf4"), options);  // pre-quantized
  const at::Tensor ours = logits(*model);
  const at::Tensor merged = qtrain_logits("lora", "dense");
  const double same_file = max_diff(refs.at("nf4"), ours);
  std::printf("nf4 export: bitsandbytes vs qtrain on the same file %.3g; vs the bf16 merge %.3g\n",
              same_file, max_diff(refs.at("nf4"), merged));
  EXPECT_LT(same_file, 1e-3);
}

TEST_F(ExportCli, GptqExportDequantizesToTheMergedInt4Model) {
  NEED_REFERENCES();
  // The files as qtrain reads them back (the fit itself: test_qalora_int4_export.cpp).
  auto model = load_int4_causal_lm(model_dir_, {.dtype = at::kFloat, .group_size = 32});
  const auto adapters =
      attach_peft_adapter(*model, load_peft_adapter(dir_->file("run-qalora") + "/adapter"));
  const CheckpointReader files = CheckpointReader::open_dir(dir_->file("gptq"));
  int64_t checked = 0;
  for (const auto& [module, slot] : adapters) {
    ASSERT_TRUE(std::dynamic_pointer_cast<QaLoraLinear>(slot)) << module;
    const at::Tensor expected = dequantize_gptq_projection(
        {files.tensor(module + ".qweight"), files.tensor(module + ".qzeros"),
         files.tensor(module + ".scales"), files.tensor(module + ".g_idx")});
    const at::Tensor got = refs.at("gptq_weight." + module);
    EXPECT_TRUE(at::equal(got, expected)) << module << " max diff " << max_diff(got, expected);
    ++checked;
  }
  EXPECT_EQ(checked, 14);  // 2 layers x 7 projections

  const at::Tensor unmerged = logits(*model);
  const at::Tensor base_only = qtrain_logits("qalora", "int4", /*with_adapter=*/false);
  // merged-bf16 over the as-trained INT4 base is the QA-LoRA model itself, to bf16 rounding.
  const double merged = max_diff(refs.at("merged.qalora"), unmerged);
  std::printf("QA-LoRA merged-bf16 (trained base) vs the unmerged model: %.4g\n", merged);
  EXPECT_LT(merged, 8 * 0x1p-8 * unmerged.abs().max().item<double>());
  const double gptq = max_diff(refs.at("gptq"), unmerged);
  const double effect = max_diff(unmerged, base_only);
  std::printf("gptq export vs unmerged QA-LoRA model: %.4g (adapter effect %.4g)\n%s\n", gptq,
              effect, gptq_report_.c_str());
  EXPECT_LT(gptq, effect) << "the export must keep most of what the adapter learned";
}

TEST_F(ExportCli, GgufExportHoldsTheMergedWeightsAndRunsInLlamaCpp) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  ASSERT_TRUE(exports_ok_);
  // Every matrix equals the merged-fp16 export's (Q/K permutation undone by the reader); the
  // norms are F32 in GGUF, so they differ from that export's fp16 copies by fp16 rounding only.
  std::string out;
  testing::run_reference_script("read_gguf.py",
                                {dir_->file("merged-f16.gguf"), dir_->file("merged-fp16")}, &out);
  ASSERT_NE(out.find('{'), std::string::npos) << out;
  const auto report = nlohmann::json::parse(out.substr(out.find('{')));
  EXPECT_EQ(report["tensor_count"].get<int64_t>(), 21) << out;  // 2 x 9 + norm, embd, output
  EXPECT_TRUE(report["checks"]["layout"].empty()) << out;
  EXPECT_TRUE(report["checks"]["tokenizer"].empty()) << out;
  // qexport's read-back summary counts the same tensors and types as gguf-py.
  std::map<std::string, int> types;
  for (const auto& t : report["tensors"]) ++types[t["type"].get<std::string>()];
  std::string summary = "read back: " + std::to_string(report["tensors"].size()) + " tensors (";
  for (const auto& [type, count] : types) {
    summary += (summary.back() == '(' ? "" : ", ") + std::to_string(count) + " " + type;
  }
  summary += "), " + std::to_string(report["metadata"].size()) + " metadata keys";
  EXPECT_NE(gguf_report_.find(summary), std::string::npos) << summary << "\n" << gguf_report_;
  for (const auto& [name, diff] : report["compared"].items()) {
    if (name.find("norm") != std::string::npos) {
      EXPECT_LT(diff.get<double>(), 1e-3) << name;
    } else {
      EXPECT_EQ(diff.get<double>(), 0.0) << name;
    }
  }

  if (testing::run_reference_script("llama_cpp_logits.py", {"check"}, &out) == 3) {
    if (std::getenv("QTRAIN_REQUIRE_INTEROP")) FAIL() << "llama_cpp is not installed: " << out;
    GTEST_SKIP() << "llama_cpp is not installed";
  }
  std::vector<int64_t> row(ids_[0].data_ptr<int64_t>(), ids_[0].data_ptr<int64_t>() + ids_.size(1));
  testing::write_file(dir_->file("row.json"), nlohmann::json(row).dump());
  ASSERT_EQ(testing::run_reference_script(
                "llama_cpp_logits.py",
                {"eval", dir_->file("merged-f16.gguf"), dir_->file("row.json")}, &out),
            0)
      << out;
  const auto result = nlohmann::json::parse(out.substr(out.find('{')));
  const auto& rows = result["logits"];
  std::vector<float> flat;
  for (const auto& position : rows) {
    for (const auto& v : position) flat.push_back(v.get<float>());
  }
  const at::Tensor llama = at::tensor(flat).reshape({static_cast<int64_t>(rows.size()), -1});
  const at::Tensor expected = qtrain_logits("lora", "dense")[0];
  const double diff = max_diff(llama, expected);
  std::printf("llama.cpp on the merged F16 GGUF vs qtrain base+LoRA: %.4g (|logits| max %.3g)\n",
              diff, expected.abs().max().item<double>());
  EXPECT_LT(diff, 8 * 0x1p-11 * expected.abs().max().item<double>());
}

TEST_F(ExportCli, RecipeExportListRunsAfterTraining) {
  ASSERT_TRUE(exports_ok_);
  const std::string gguf = dir_->file("run-lora/export/gguf-q4_0.gguf");
  ASSERT_TRUE(fs::exists(gguf));
  EXPECT_EQ(testing::read_file(gguf).substr(0, 4), "GGUF");
  // Every entry the recipe accepts is a format (and GGUF type) qexport knows.
  for (const std::string& entry : recipe_export_formats()) {
    const size_t colon = entry.find(':');
    EXPECT_NO_THROW(export_format_from_name(entry.substr(0, colon))) << entry;
    if (colon != std::string::npos) {
      EXPECT_NO_THROW(parse_gguf_outtype(entry.substr(colon + 1))) << entry;
    }
  }
}

TEST_F(ExportCli, BadInputsFailClearlyAndKeepExistingOutputs) {
  ASSERT_TRUE(exports_ok_);
  std::string out;
  EXPECT_EQ(testing::run_command(
                tool("qexport") + " " + dir_->file("nothing") + " -o " + dir_->file("x"), &out),
            4)
      << out;
  EXPECT_NE(out.find("no such directory"), std::string::npos) << out;

  EXPECT_EQ(testing::run_command(tool("qexport") + " " + dir_->file("run-lora") + " -f onnx", &out),
            2)
      << out;
  EXPECT_NE(out.find("merged-bf16"), std::string::npos) << out;

  // An existing output is refused without --overwrite and stays as it was.
  const std::string before = testing::read_file(dir_->file("merged-bf16/config.json"));
  EXPECT_EQ(testing::run_command(
                tool("qexport") + " " + dir_->file("run-lora") + " -o " + dir_->file("merged-bf16"),
                &out),
            4)
      << out;
  EXPECT_NE(out.find("--overwrite"), std::string::npos) << out;
  EXPECT_EQ(testing::read_file(dir_->file("merged-bf16/config.json")), before);

  // gptq-int4 needs a QA-LoRA run.
  EXPECT_EQ(testing::run_command(tool("qexport") + " " + dir_->file("run-lora") +
                                     " -f gptq-int4 -o " + dir_->file("gptq-from-lora"),
                                 &out),
            3)
      << out;
  EXPECT_NE(out.find("QA-LoRA"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir_->file("gptq-from-lora")));

  // An adapter on a base of another size: the adapter tensor is named.
  EXPECT_EQ(testing::run_command("QTRAIN_CACHE_DIR=" + testing::binary_dir() + "/test-cache " +
                                     tool("qexport") + " " + dir_->file("adapter") +
                                     " --base builtin:tiny -o " + dir_->file("wrong-base"),
                                 &out),
            6)
      << out;
  EXPECT_NE(out.find("lora_A"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir_->file("wrong-base")));
  // Nothing half-written is left beside the outputs.
  for (const auto& entry : fs::directory_iterator(dir_->path())) {
    EXPECT_EQ(entry.path().filename().string().rfind(".", 0), std::string::npos) << entry.path();
  }
}

}  // namespace
}  // namespace qtrain
