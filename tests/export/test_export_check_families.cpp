// qexport -f gguf with its check through the real binaries on qtrain runs (two LoRA steps on an
// NF4 base) of qtiny's gemma2, gemma3 and phi3: the check reads the file back
// (export/export_readback.h) with Gemma's own norm names and 1 + w norms and phi3's fused
// projections. The default export and its check exit 0; an F32 file merged into the base as
// training quantized it holds the trained model itself, so its read-back loss is the trained loss.
#include "data/tiny_instruct.h"
#include "models/tiny_model.h"
#include "tests/support/test_support.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <string>

namespace qtrain {
namespace {

namespace t = qtrain::testing;
using json = nlohmann::json;

const char* const kArchs[] = {"gemma2", "gemma3", "phi3"};

std::string tool(const std::string& name) {
  return "QTRAIN_CACHE_DIR=" + t::binary_dir() + "/test-cache " + t::binary_dir() + "/tools/" +
         name;
}

// max_seq_len 256: the micro tokenizer spells the prompts out in many pieces.
std::string recipe_text(const std::string& model, const std::string& data, const std::string& out) {
  return "model:\n  path: " + model +
         "\n  dtype: float32\n  device: cpu\nquantization:\n  type: nf4\n"
         "adapter:\n  type: lora\n  r: 4\n  alpha: 8\n  dropout: 0.0\n  dtype: float32\n"
         "data:\n  path: " +
         data +
         "\n  max_seq_len: 256\n  eval_fraction: 0.2\n"
         "training:\n  micro_batch_size: 4\n  grad_accum_steps: 1\n  max_steps: 2\n"
         "  lr: 2.0e-2\n  optimizer: adamw\n  seed: 3\n"
         "output:\n  dir: " +
         out + "\n  tensorboard: false\n";
}

class ExportCheckFamilies : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new t::ScratchDir("qtrain-export-check-families");
    write_tiny_instruct_dataset(dir_->file("data.jsonl"), 40, 5);
    for (const std::string arch : kArchs) {
      const std::string model = dir_->file("model-" + arch);
      write_tiny_model({.arch = arch, .preset = "micro", .seed = 3}, model);
      const std::string recipe = dir_->file(arch + ".yaml");
      t::write_file(recipe, recipe_text(model, dir_->file("data.jsonl"), run(arch)));
      std::string out;
      ASSERT_EQ(t::run_command(tool("qtrain") + " " + recipe + " 2>&1", &out), 0) << out;
    }
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

  static std::string run(const std::string& arch) { return dir_->file("run-" + arch); }
  // qexport RUN -f gguf -o OUT FLAGS: its exit status, its output in `printed`.
  static int export_gguf(const std::string& arch, const std::string& out, const std::string& flags,
                         std::string* printed) {
    return t::run_command(tool("qexport") + " " + run(arch) + " -f gguf -o " + dir_->file(out) +
                              " " + flags + " 2>&1",
                          printed);
  }
  static json report(const std::string& out) {
    return json::parse(t::read_file(dir_->file(out) + ".export_check.json"));
  }

  static t::ScratchDir* dir_;
};

t::ScratchDir* ExportCheckFamilies::dir_ = nullptr;

TEST_F(ExportCheckFamilies, DefaultGgufExportAndItsCheckSucceed) {
  for (const std::string arch : kArchs) {
    std::string printed;
    ASSERT_EQ(export_gguf(arch, arch + ".gguf", "", &printed), 0) << arch << ": " << printed;
    EXPECT_NE(printed.find("check on the run's held-out split"), std::string::npos) << printed;
    const json r = report(arch + ".gguf");
    EXPECT_TRUE(std::isfinite(r["exported"]["loss"].get<double>())) << arch;
    EXPECT_GT(r["loss_tokens"].get<int64_t>(), 0) << arch;
  }
}

// Merged into the dequantized NF4 base and written as F32, the file is the trained model up to
// float32 rounding of the merge and of Gemma's 1 + w (measured: |change| < 1e-6 for all three);
// a norm read back under the wrong name or still holding 1 + w moves the loss by far more.
TEST_F(ExportCheckFamilies, F32OfTheTrainedBaseReadsBackToTheTrainedLoss) {
  for (const std::string arch : kArchs) {
    const std::string out = arch + "-f32.gguf";
    std::string printed;
    ASSERT_EQ(export_gguf(arch, out, "--gguf-type f32 --base-weights trained", &printed), 0)
        << arch << ": " << printed;
    const json r = report(out);
    const double trained = r["trained"]["loss"].get<double>();
    const double exported = r["exported"]["loss"].get<double>();
    std::printf("%-7s trained %.7f  exported %.7f  change %+.2e\n", arch.c_str(), trained, exported,
                exported - trained);
    EXPECT_NEAR(exported, trained, 1e-4) << arch;
  }
}

}  // namespace
}  // namespace qtrain
