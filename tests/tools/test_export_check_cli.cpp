// qexport --check through the real binaries: two qtrain runs (LoRA on an NF4 base, QA-LoRA on an
// INT4 base with groups of 32) of a qtiny llama 256 wide (so q4_k_m holds real Q4_K and Q6_K
// tensors), exported as gptq-int4, nf4, gguf q4_k_m and q8_0. The printed and written "trained"
// loss must be the run's own final held-out loss, and each "exported" loss what an independent
// reader of the file gives: gguf-py's dequantize / a numpy GPTQ v1 dequantizer written out as a
// dense model and evaluated by qeval, or qeval on the nf4 directory as it is. Then the bitsandbytes
// 4-bit export opened by qeval and qgen without flags (issue 23, parts 2 and 3).
#include "data/tiny_instruct.h"
#include "models/tiny_model.h"
#include "tests/support/test_support.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <sstream>

namespace qtrain {
namespace {

namespace fs = std::filesystem;
namespace t = qtrain::testing;
using json = nlohmann::json;

std::string tool(const std::string& name) {
  return "QTRAIN_CACHE_DIR=" + t::binary_dir() + "/test-cache " + t::binary_dir() + "/tools/" +
         name;
}

std::string recipe_text(const std::string& model, const std::string& data, const std::string& out,
                        bool qalora) {
  const std::string quant = qalora ? "  type: int4\n  group_size: 32\n" : "  type: nf4\n";
  return "model:\n  path: " + model + "\n  dtype: float32\n  device: cpu\nquantization:\n" + quant +
         "adapter:\n  type: " + (qalora ? "qalora" : "lora") +
         "\n  r: 8\n  alpha: 16\n  dropout: 0.0\n  dtype: float32\n"
         "data:\n  path: " +
         data +
         "\n  max_seq_len: 128\n  eval_fraction: 0.1\n"
         "training:\n  micro_batch_size: 8\n  grad_accum_steps: 1\n  max_steps: 12\n"
         "  lr: 2.0e-2\n  optimizer: adamw\n  seed: 3\n"
         "output:\n  dir: " +
         out + "\n  tensorboard: false\n";
}

// The run's last eval_loss in metrics.jsonl: what training measured itself.
double run_eval_loss(const std::string& run) {
  double loss = NAN;
  std::istringstream metrics(t::read_file(run + "/metrics.jsonl"));
  for (std::string line; std::getline(metrics, line);) {
    const auto record = json::parse(line);
    if (record.contains("eval_loss")) loss = record["eval_loss"].get<double>();
  }
  return loss;
}

struct Export {
  std::string run, format, out, extra;
};

class ExportCheckCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new t::ScratchDir("qtrain-export-check");
    write_tiny_model({.arch = "llama",
                      .preset = "micro",
                      .seed = 7,
                      .hidden_size = 256,
                      .intermediate_size = 512},
                     model_dir());
    write_tiny_instruct_dataset(dir_->file("data.jsonl"), 96, 5);
    for (bool qalora : {false, true}) {
      const std::string name = qalora ? "qalora" : "lora";
      t::write_file(dir_->file(name + ".yaml"),
                    recipe_text(model_dir(), dir_->file("data.jsonl"), run(name), qalora));
      std::string out;
      ASSERT_EQ(t::run_command(tool("qtrain") + " " + dir_->file(name + ".yaml") + " 2>&1", &out),
                0)
          << out;
    }
    const Export exports[] = {
        {"qalora", "gptq-int4", "gptq", ""},
        {"lora", "nf4", "nf4", ""},
        {"lora", "gguf", "q4_k_m.gguf", "--gguf-type q4_k_m"},
        {"lora", "gguf", "q8_0.gguf", "--gguf-type q8_0"},
        {"lora", "merged-bf16", "merged-trained", "--base-weights trained"},
    };
    for (const Export& e : exports) {
      std::string out;
      const int code = t::run_command(tool("qexport") + " " + run(e.run) + " -f " + e.format +
                                          " -o " + dir_->file(e.out) + " " + e.extra + " 2>&1",
                                      &out);
      ASSERT_EQ(code, 0) << e.format << ": " << out;
      printed_[e.out] = out;
    }
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

  static std::string model_dir() { return dir_->file("model"); }
  static std::string run(const std::string& name) { return dir_->file("run-" + name); }
  static json report(const std::string& out) {
    const std::string path = fs::is_directory(dir_->file(out))
                                 ? dir_->file(out) + "/export_check.json"
                                 : dir_->file(out) + ".export_check.json";
    return json::parse(t::read_file(path));
  }
  // qeval's held-out loss of MODEL on a run's split (--recipe), as the JSON row says.
  static double qeval_loss(const std::string& run_name, const std::string& model,
                           const std::string& flags = "") {
    std::string out;
    const std::string table = dir_->file("qeval-" + run_name + ".json");
    EXPECT_EQ(t::run_command(tool("qeval") + " --recipe " + run(run_name) + "/recipe.yaml " +
                                 model + " " + flags + " --json " + table + " 2>&1",
                             &out),
              0)
        << out;
    return json::parse(t::read_file(table))["rows"][0]["mean_loss"].get<double>();
  }

  static t::ScratchDir* dir_;
  static std::map<std::string, std::string> printed_;
};

t::ScratchDir* ExportCheckCli::dir_ = nullptr;
std::map<std::string, std::string> ExportCheckCli::printed_;

TEST_F(ExportCheckCli, EveryLossyFormatPrintsAndWritesTrainedAndExportedLoss) {
  for (const std::string out : {"gptq", "nf4", "q4_k_m.gguf", "q8_0.gguf"}) {
    const std::string& printed = printed_.at(out);
    EXPECT_NE(printed.find("check on the run's held-out split"), std::string::npos) << printed;
    const json r = report(out);
    const std::string run_name = out == "gptq" ? "qalora" : "lora";
    const double trained = r["trained"]["loss"].get<double>();
    const double exported = r["exported"]["loss"].get<double>();
    std::printf("%-12s trained %.5f  exported %.5f  change %+.5f (%+.2f%%)\n", out.c_str(), trained,
                exported, exported - trained, r["loss_change_percent"].get<double>());
    // The trained model as the check builds it is the model training evaluated last.
    EXPECT_NEAR(trained, run_eval_loss(run(run_name)), 1e-5) << out;
    EXPECT_TRUE(std::isfinite(exported)) << out;
    EXPECT_NEAR(r["perplexity_change_percent"].get<double>(),
                100.0 * (std::exp(exported - trained) - 1.0), 1e-6)
        << out;
    EXPECT_GT(r["loss_tokens"].get<int64_t>(), 0);
    char line[64];
    std::snprintf(line, sizeof(line), "exported: loss %.5f", exported);
    EXPECT_NE(printed.find(line), std::string::npos) << printed;
    std::snprintf(line, sizeof(line), "trained:  loss %.5f", trained);
    EXPECT_NE(printed.find(line), std::string::npos) << printed;
  }
  // 256-wide rows: the q4_k_m file holds the K-quants themselves, not only their fallbacks.
  EXPECT_NE(printed_.at("q4_k_m.gguf").find("Q4_K"), std::string::npos);
  EXPECT_NE(printed_.at("q4_k_m.gguf").find("Q6_K"), std::string::npos);
}

// The exported loss is the file's: written out as a dense model by other readers and evaluated by
// qeval on the same split, it is the same number.
TEST_F(ExportCheckCli, ExportedLossIsWhatIndependentReadersOfTheFileGive) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  struct Case {
    std::string out, run, args;
  };
  const Case cases[] = {
      {"q4_k_m.gguf", "lora", "gguf " + dir_->file("q4_k_m.gguf") + " " + model_dir()},
      {"q8_0.gguf", "lora", "gguf " + dir_->file("q8_0.gguf") + " " + model_dir()},
      {"gptq", "qalora", "gptq " + dir_->file("gptq")},
  };
  for (const Case& c : cases) {
    const std::string dense = dir_->file("dense-" + c.out);
    std::vector<std::string> args;
    std::istringstream words(c.args + " " + dense);
    for (std::string w; words >> w;) args.push_back(w);
    std::string out;
    ASSERT_EQ(t::run_reference_script("export_as_dense.py", args, &out), 0) << out;
    const double independent = qeval_loss(c.run, dense, "--precision fp32");
    EXPECT_NEAR(report(c.out)["exported"]["loss"].get<double>(), independent, 1e-6) << c.out;
  }
}

// The nf4 directory as qeval opens it with no flags (its stored precision).
TEST_F(ExportCheckCli, Nf4ExportedLossIsQevalsOnTheDirectory) {
  EXPECT_NEAR(report("nf4")["exported"]["loss"].get<double>(),
              qeval_loss("lora", dir_->file("nf4")), 1e-9);
}

// Merging into the base as training quantized it changes only the bf16 rounding of the weights:
// the check sees (almost) no change, so it measures the export and nothing of its own.
TEST_F(ExportCheckCli, MergeIntoTheTrainedBaseKeepsTheLoss) {
  const json r = report("merged-trained");
  EXPECT_LT(std::abs(r["loss_change"].get<double>()), 2e-3) << r.dump(2);
}

TEST_F(ExportCheckCli, NoCheckSkipsAndRemovesAStaleGgufReport) {
  const std::string gguf = dir_->file("q8_0.gguf");
  ASSERT_TRUE(fs::exists(gguf + ".export_check.json"));
  std::string out;
  ASSERT_EQ(t::run_command(tool("qexport") + " " + run("lora") + " -f gguf --gguf-type q8_0 -o " +
                               gguf + " --overwrite --no-check 2>&1",
                           &out),
            0)
      << out;
  EXPECT_EQ(out.find("  check"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(gguf + ".export_check.json"));
  EXPECT_EQ(
      t::run_command(tool("qexport") + " " + run("lora") + " -f nf4 --check --no-check 2>&1", &out),
      2)
      << out;
}

TEST_F(ExportCheckCli, AnAdapterDirectoryHasNoSplit) {
  const std::string adapter = run("lora") + "/adapter";
  std::string out;
  // Asked for: refused before anything is written.
  EXPECT_EQ(t::run_command(tool("qexport") + " " + adapter + " -f nf4 -o " +
                               dir_->file("adapter-nf4") + " --check 2>&1",
                           &out),
            2)
      << out;
  EXPECT_NE(out.find("--check: "), std::string::npos) << out;
  EXPECT_NE(out.find("no held-out split"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir_->file("adapter-nf4")));
  // By default: exported, and the line says why there is no check.
  ASSERT_EQ(t::run_command(tool("qexport") + " " + adapter + " -f nf4 -o " +
                               dir_->file("adapter-nf4") + " 2>&1",
                           &out),
            0)
      << out;
  EXPECT_NE(out.find("check: not run: "), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir_->file("adapter-nf4") + "/export_check.json"));
}

TEST_F(ExportCheckCli, ARunWithoutHeldOutDataIsNotChecked) {
  const std::string copy = dir_->file("run-noeval");
  fs::copy(run("lora"), copy, fs::copy_options::recursive);
  std::string recipe = t::read_file(copy + "/recipe.yaml");
  const size_t at = recipe.find("eval_fraction: 0.1");
  ASSERT_NE(at, std::string::npos) << recipe;
  recipe.replace(at, 18, "eval_fraction: 0");
  t::write_file(copy + "/recipe.yaml", recipe);
  std::string out;
  ASSERT_EQ(t::run_command(tool("qexport") + " " + copy + " -f nf4 2>&1", &out), 0) << out;
  EXPECT_NE(out.find("check: not run: the run holds out no data"), std::string::npos) << out;
  EXPECT_EQ(t::run_command(tool("qexport") + " " + copy + " -f nf4 --overwrite --check 2>&1", &out),
            2)
      << out;
}

// Part 3: the directory `qexport --format nf4` wrote opens in qeval and qgen as it is.
TEST_F(ExportCheckCli, Nf4ExportOpensInQevalAndQgenWithoutFlags) {
  const std::string nf4 = dir_->file("nf4");
  t::write_file(dir_->file("eval.txt"),
                "Below is an instruction that describes a task. Write a response that "
                "appropriately completes the request. Name a colour. Blue is a colour.");
  std::string out;
  const std::string data = " --data " + dir_->file("eval.txt") + " --json " + dir_->file("p.json");
  ASSERT_EQ(t::run_command(tool("qeval") + " " + nf4 + data + " 2>&1", &out), 0) << out;
  const json table = json::parse(t::read_file(dir_->file("p.json")));
  EXPECT_EQ(table["rows"][0]["precision"], "nf4");
  // Asking for it changes nothing; asking for another precision is refused, naming the flag.
  ASSERT_EQ(t::run_command(tool("qeval") + " " + nf4 + data + " --precision nf4 2>&1", &out), 0)
      << out;
  EXPECT_EQ(json::parse(t::read_file(dir_->file("p.json")))["rows"][0]["perplexity"],
            table["rows"][0]["perplexity"]);
  EXPECT_EQ(t::run_command(tool("qeval") + " " + nf4 + data + " --precision bf16 2>&1", &out), 2)
      << out;
  EXPECT_NE(out.find("drop --precision bf16 or pass --precision nf4"), std::string::npos) << out;
  EXPECT_EQ(t::run_command(tool("qeval") + " " + nf4 + data + " --compare nf4,int8 2>&1", &out), 2)
      << out;
  EXPECT_NE(out.find("--compare int8"), std::string::npos) << out;

  // stdout alone: the continuation (stderr has the load log and the speed).
  const std::string gen = " --prompt 'Name a colour.' -n 6 2>/dev/null >";
  std::string ignored;
  for (const std::string& flags : {std::string(), std::string(" --precision nf4")}) {
    const std::string file = dir_->file(flags.empty() ? "plain.txt" : "explicit.txt");
    ASSERT_EQ(t::run_command("(" + tool("qgen") + " " + nf4 + flags + gen + file + ")", &ignored),
              0)
        << ignored;
  }
  const std::string plain = t::read_file(dir_->file("plain.txt"));
  EXPECT_EQ(plain, t::read_file(dir_->file("explicit.txt")));
  EXPECT_EQ(plain.rfind("Name a colour.", 0), 0u) << plain;
  EXPECT_EQ(t::run_command(tool("qgen") + " " + nf4 + " --prompt hi --precision fp16", &out), 2)
      << out;
  EXPECT_NE(out.find("--precision fp16"), std::string::npos) << out;
}

}  // namespace
}  // namespace qtrain
