// Recipe parsing, validation, overrides, round trip, the shipped recipes, and the memory
// estimate's identities.
#include "core/error.h"
#include "models/hf_names.h"
#include "models/quantized_memory.h"
#include "tests/support/test_support.h"
#include "trainer/dry_run.h"
#include "trainer/memory_estimate.h"
#include "trainer/recipe/known_models.h"
#include "trainer/recipe/recipe.h"
#include "trainer/recipe/recipe_keys.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <sstream>

namespace qtrain {
namespace {

const std::string kSource = "test.yaml";

// A valid recipe; bad cases are written out in full so their line numbers are visible.
const std::string kValid = R"(model:
  path: builtin:tiny
data:
  path: data.jsonl
)";

// The YAML without its comment lines (the resolved header names source and overrides).
std::string without_comments(const std::string& yaml) {
  std::istringstream in(yaml);
  std::string out;
  for (std::string line; std::getline(in, line);)
    if (line.rfind("#", 0) != 0) out += line + "\n";
  return out;
}

Error parse_error(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  try {
    parse_recipe(yaml, kSource, overrides);
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "no error for:\n" << yaml;
  return Error(ErrorKind::kInternal, "no error");
}

struct BadCase {
  std::string name;
  std::string yaml;
  std::string key;   // ErrorContext::field and part of the message; "" for malformed YAML
  int64_t line;      // 1-based; -1 when no line applies
  std::string text;  // a further part of the message
};

// Every case is exit code 3 (kConfig).
const std::vector<BadCase>& bad_cases() {
  static const std::vector<BadCase> kCases = {
      {"malformed_yaml", "model:\n  path: x\ndata: [a, b\ntraining:\n  lr: 1\n", "", 4,
       "malformed YAML"},
      {"not_a_mapping", "- model\n- data\n", "", 1, "mapping of sections"},
      {"unknown_section", kValid + "trainig:\n  lr: 1.0e-4\n", "trainig", 5,
       "did you mean 'training'?"},
      {"unknown_key_alias_typo", kValid + "training:\n  lerning_rate: 1.0e-4\n",
       "training.lerning_rate", 6, "did you mean 'training.lr'?"},
      {"unknown_key_typo", kValid + "training:\n  grad_acum_steps: 4\n", "training.grad_acum_steps",
       6, "did you mean 'training.grad_accum_steps'?"},
      {"unknown_key_peft_name", "model:\n  path: m\nadapter:\n  lora_alpha: 32\ndata:\n  path: d\n",
       "adapter.lora_alpha", 4, "did you mean 'adapter.alpha'?"},
      {"key_in_wrong_section", kValid + "training:\n  max_seq_len: 128\n", "training.max_seq_len",
       6, "did you mean 'data.max_seq_len'?"},
      {"duplicate_key", kValid + "training:\n  lr: 1.0e-4\n  lr: 2.0e-4\n", "training.lr", 7,
       "duplicate key"},
      {"section_not_mapping", kValid + "training: 5\n", "training", 5, "expected a mapping"},
      {"number_expected", kValid + "training:\n  lr: fast\n", "training.lr", 6,
       "expected a number, got 'fast'"},
      {"quoted_number", kValid + "training:\n  lr: \"1e-4\"\n", "training.lr", 6,
       "expected a number"},
      {"integer_expected", kValid + "training:\n  micro_batch_size: 2.5\n",
       "training.micro_batch_size", 6, "expected an integer"},
      {"bool_expected", kValid + "training:\n  gradient_checkpointing: maybe\n",
       "training.gradient_checkpointing", 6, "expected true or false"},
      {"list_expected", kValid + "adapter:\n  target_modules: {q: v}\n", "adapter.target_modules",
       6, "expected a list"},
      {"negative_seed", kValid + "training:\n  seed: -1\n", "training.seed", 6,
       "non-negative integer"},
      {"infinite_lr", kValid + "training:\n  lr: .inf\n", "training.lr", 6, "finite"},
      {"lr_zero", kValid + "training:\n  lr: 0\n", "training.lr", 6, "must be > 0"},
      {"r_zero", kValid + "adapter:\n  r: 0\n", "adapter.r", 6, "must be >= 1"},
      {"dropout_one", kValid + "adapter:\n  dropout: 1.0\n", "adapter.dropout", 6, "[0, 1)"},
      {"blocksize_not_power_of_two", kValid + "quantization:\n  blocksize: 100\n",
       "quantization.blocksize", 6, "power of two"},
      {"blocksize_too_small", kValid + "quantization:\n  type: fp4\n  blocksize: 32\n",
       "quantization.blocksize", 7, "64 to 4096"},
      {"group_size",
       kValid + "quantization:\n  type: int4\n  group_size: 48\nadapter:\n  type: qalora\n",
       "quantization.group_size", 7, "32, 64 or 128"},
      {"grad_accum_zero", kValid + "training:\n  grad_accum_steps: 0\n",
       "training.grad_accum_steps", 6, "must be >= 1"},
      {"max_seq_len_small", "model:\n  path: m\ndata:\n  path: d\n  max_seq_len: 4\n",
       "data.max_seq_len", 5, "must be >= 8"},
      {"rank_absurd", kValid + "adapter:\n  r: 2147483648\n", "adapter.r", 6,
       "must be at most 65536 (got 2147483648)"},
      {"rank_at_cap_plus_one", kValid + "adapter:\n  r: 65537\n", "adapter.r", 6,
       "must be at most 65536"},
      {"max_seq_len_absurd",
       "model:\n  path: m\ndata:\n  path: d\n  max_seq_len: 1099511627776\n  packing: true\n",
       "data.max_seq_len", 5, "must be at most 16777216"},
      {"micro_batch_tokens",
       "model:\n  path: m\ndata:\n  path: d\n  max_seq_len: 16777216\ntraining:\n"
       "  micro_batch_size: 17\n",
       "training.micro_batch_size", 7, "(17 x 16777216) is more than 268435456 tokens"},
      {"warmup_ratio_one", kValid + "training:\n  warmup_ratio: 1\n", "training.warmup_ratio", 6,
       "[0, 1)"},
      {"keep_last_zero", kValid + "output:\n  keep_last: 0\n", "output.keep_last", 6,
       "must be >= 1"},
      {"unknown_optimizer", kValid + "training:\n  optimizer: sgd\n", "training.optimizer", 6,
       "expected one of: adamw, paged_adamw, adamw_8bit, paged_adamw_8bit"},
      {"unknown_quant_type", kValid + "quantization:\n  type: nf3\n", "quantization.type", 6,
       "nf4, fp4, int8, int4, none"},
      {"unknown_device", "model:\n  path: m\n  device: gpu\ndata:\n  path: d\n", "model.device", 3,
       "cuda:N"},
      {"qalora_needs_int4", kValid + "adapter:\n  type: qalora\n", "adapter.type", 6,
       "needs quantization.type int4"},
      {"int4_needs_qalora", kValid + "quantization:\n  type: int4\n", "quantization.type", 6,
       "needs adapter.type qalora"},
      {"double_quant_int8", kValid + "quantization:\n  type: int8\n  double_quant: true\n",
       "quantization.double_quant", 7, "nf4/fp4 only"},
      {"missing_model_path", "model:\n  dtype: float32\ndata:\n  path: d\n", "model.path", 1,
       "is required"},
      {"missing_model_section", "data:\n  path: d\n", "model.path", -1, "is required"},
      {"missing_data_path", "model:\n  path: m\ndata:\n  format: text\n", "data.path", 3,
       "is required"},
      {"targets_and_regex",
       kValid + "adapter:\n  target_modules: [q_proj]\n  target_regex: .*q_proj\n",
       "adapter.target_regex", 7, "alternatives"},
      {"bad_regex", kValid + "adapter:\n  target_regex: \"(q_proj\"\n", "adapter.target_regex", 6,
       "not a valid regular expression"},
      {"all_linear_not_alone", kValid + "adapter:\n  target_modules: [all-linear, lm_head]\n",
       "adapter.target_modules", 6, "only entry"},
      {"empty_targets", kValid + "adapter:\n  target_modules: []\n", "adapter.target_modules", 6,
       "names no module"},
      {"chat_needs_chat_template", "model:\n  path: m\ndata:\n  path: d\n  format: chat\n",
       "data.template", 3, "needs a chat template (chatml"},
      {"unknown_data_field", "model:\n  path: m\ndata:\n  path: d\n  fields: {question: q}\n",
       "data.fields", 5, "not a field of format alpaca"},
      {"eval_without_data", kValid + "  eval_fraction: 0\ntraining:\n  eval_every: 10\n",
       "training.eval_every", 7, "no eval data"},
      {"warmup_both", kValid + "training:\n  warmup_steps: 5\n  warmup_ratio: 0.1\n",
       "training.warmup_ratio", 7, "alternatives"},
      {"warmup_beyond_max_steps", kValid + "training:\n  max_steps: 10\n  warmup_steps: 20\n",
       "training.warmup_steps", 7, "exceeds training.max_steps"},
      {"nccl_on_cpu",
       "model:\n  path: m\n  device: cpu\ndata:\n  path: d\ndistributed:\n  backend: nccl\n",
       "distributed.backend", 7, "nccl needs CUDA"},
  };
  return kCases;
}

TEST(RecipeErrors, EveryBadCaseNamesItsKeyAndLine) {
  ASSERT_GE(bad_cases().size(), 25u);
  for (const BadCase& c : bad_cases()) {
    SCOPED_TRACE(c.name);
    const Error e = parse_error(c.yaml);
    const std::string what = e.what();
    EXPECT_EQ(e.kind(), ErrorKind::kConfig) << what;
    EXPECT_EQ(e.exit_code(), 3);
    EXPECT_EQ(e.context().file, kSource);
    EXPECT_EQ(e.context().line, c.line) << what;
    EXPECT_NE(what.find(c.text), std::string::npos) << what;
    if (!c.key.empty()) {
      EXPECT_EQ(e.context().field, c.key) << what;
      EXPECT_NE(what.find("'" + c.key + "'"), std::string::npos) << what;
    }
    if (c.line >= 0) {
      EXPECT_NE(what.find(kSource + ":" + std::to_string(c.line) + ":"), std::string::npos) << what;
    }
  }
}

TEST(RecipeErrors, EveryBadCaseIsValidOnceFixed) {
  // The cases must fail for their stated reason, not because the base text is broken.
  EXPECT_NO_THROW(parse_recipe(kValid, kSource));
}

TEST(RecipeErrors, SizeCapsAcceptTheirBounds) {
  // 16 x 2^24 is exactly the 2^28 tokens a micro-batch may hold.
  EXPECT_NO_THROW(parse_recipe(
      kValid, kSource,
      {"adapter.r=65536", "data.max_seq_len=16777216", "training.micro_batch_size=16"}));
}

TEST(RecipeErrors, MissingFileIsAnIoError) {
  try {
    load_recipe("/nonexistent/recipe.yaml");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_EQ(e.context().file, "/nonexistent/recipe.yaml");
  }
}

// Found by fuzz_recipe: a stray byte in a string went through yaml-cpp into model.path and came
// back out of the resolved recipe as something else.
TEST(RecipeErrors, TextThatIsNotUtf8IsRefusedWithItsLine) {
  try {
    parse_recipe("model:\n  path: \"at1\xff\"\ndata:\n  path: d.jsonl\n", "bad.yaml");
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_EQ(e.context().file, "bad.yaml");
    EXPECT_EQ(e.context().line, 2);
    EXPECT_NE(std::string(e.what()).find("not valid UTF-8"), std::string::npos) << e.what();
  }
  try {
    parse_recipe("model:\n  path: builtin:micro\ndata:\n  path: d.jsonl\n", "ok.yaml",
                 {"model.path=x\xc3"});
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUsage);
  }
}

// Found by fuzz_recipe: a NUL in output.dir vanished inside yaml-cpp and the resolved recipe came
// back with a lone byte that is not UTF-8. YAML text holds only its printable set (c-printable).
TEST(RecipeErrors, ControlCharactersInTheTextAreRefusedWithLineAndColumn) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {std::string("ruy\0_qlora", 10), "U+0000 (column 11)"},
      {"ruy\x01q", "U+0001 (column 11)"},
      {"ruy\x7fq", "U+007F (column 11)"},
      {"ruy\xc2\x9fq", "U+009F (column 11)"},
      {"r\xc3\xa9y\xef\xbf\xbf", "U+FFFF (column 11)"},
  };
  for (const auto& [dir, place] : cases) {
    const Error e = parse_error(kValid + "output:\n  dir: " + dir + "\n");
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_EQ(e.context().file, kSource);
    EXPECT_EQ(e.context().line, 6);
    EXPECT_NE(std::string(e.what()).find("control character " + place), std::string::npos)
        << e.what();
  }
}

// Double-quoted escapes reach the same characters without putting them in the text.
TEST(RecipeErrors, ControlCharactersFromEscapesAreRefusedNamingTheField) {
  for (const std::string escape : {"\\0", "\\x01", "\\x7f", "\\x9b"}) {
    const Error e = parse_error(kValid + "output:\n  dir: \"runs" + escape + "\"\n");
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_EQ(e.context().field, "output.dir");
    EXPECT_EQ(e.context().line, 6);
    EXPECT_NE(std::string(e.what()).find("control character U+00"), std::string::npos) << e.what();
  }
  // yaml-cpp decodes \_ and \N as the single bytes A0 and 85, which are not UTF-8.
  for (const std::string escape : {"\\_", "\\N"}) {
    const Error e = parse_error(kValid + "output:\n  dir: \"runs" + escape + "x\"\n");
    EXPECT_EQ(e.context().field, "output.dir");
    EXPECT_NE(std::string(e.what()).find("not valid UTF-8"), std::string::npos) << e.what();
  }
  const Error e = parse_error(kValid, {"output.dir=runs\x1b[0m"});
  EXPECT_EQ(e.kind(), ErrorKind::kUsage);
  EXPECT_NE(std::string(e.what()).find("U+001B (character 16)"), std::string::npos) << e.what();
}

// What YAML does allow in strings survives the resolved recipe: tab, newline and NEL from
// escapes, accented letters, a character outside the BMP, a byte order mark.
TEST(RecipeRoundTrip, PrintableUnicodeAndEscapedWhiteSpaceSurvive) {
  const Recipe r = parse_recipe(
      kValid + "output:\n  dir: \"caf\xc3\xa9\\t\\n\\x85 \xf0\x9f\xa6\x99\xef\xbb\xbf\"\n",
      kSource);
  EXPECT_EQ(r.output.dir, "caf\xc3\xa9\t\n\xc2\x85 \xf0\x9f\xa6\x99\xef\xbb\xbf");
  EXPECT_EQ(parse_recipe(recipe_to_yaml(r), "resolved.yaml"), r) << recipe_to_yaml(r);
}

// YAML reads a lone CR as a line break, and CRLF as one. yaml-cpp kept a lone CR inside a plain
// scalar and wrote it back raw, so the resolved recipe lost it (found by fuzz_recipe).
TEST(RecipeLineBreaks, LoneCarriageReturnsAndCrlfAreLineBreaks) {
  const Recipe lf = parse_recipe(kValid + "output:\n  dir: runs\n", kSource);
  for (const std::string& eol : {std::string("\r"), std::string("\r\n")}) {
    std::string text = kValid + "output:\n  dir: runs \r \n";
    std::string converted;
    for (const char c : text) converted += c == '\n' ? eol : std::string(1, c);
    const Recipe r = parse_recipe(converted, kSource);
    EXPECT_EQ(r.output.dir, "runs");
    EXPECT_EQ(r, lf);
  }
  const Error e = parse_error("model:\r  path: builtin:tiny\rdata:\r  path: d.jsonl\r  lr: 1\r");
  EXPECT_EQ(e.context().line, 5) << e.what();
  // An override from a script saved with CRLF line endings.
  EXPECT_EQ(parse_recipe(kValid, kSource, {"output.dir=runs\r"}).output.dir, "runs");
}

TEST(RecipeRoundTrip, EscapedCarriageReturnsAndOddSourceNamesSurvive) {
  const Recipe r = parse_recipe(
      kValid + "output:\n  dir: \"runs \\r\"\nquantization:\n" + "  skip_modules: [\"a\\r\"]\n",
      "odd\nname\x01\xff.yaml", {"output.save_every=7\n"});
  EXPECT_EQ(r.output.dir, "runs \r");
  EXPECT_EQ(r.quantization.skip_modules, std::vector<std::string>{"a\r"});
  EXPECT_EQ(r.output.save_every, 7);
  const std::string yaml = recipe_to_yaml(r);
  EXPECT_NE(yaml.find("# qtrain recipe, fully resolved from odd\\x0Aname\\x01\xef\xbf\xbd.yaml"),
            std::string::npos)
      << yaml;
  EXPECT_NE(yaml.find("# overrides: output.save_every=7\\x0A\n"), std::string::npos) << yaml;
  EXPECT_EQ(parse_recipe(yaml, "resolved.yaml"), r) << yaml;
}

TEST(RecipeDefaults, MinimalRecipeTakesThePaperDefaults) {
  const Recipe r = parse_recipe(kValid, kSource);
  EXPECT_EQ(r.quantization.type, "nf4");
  EXPECT_TRUE(r.quantization.double_quant);
  EXPECT_EQ(r.adapter.r, 8);
  EXPECT_EQ(r.adapter.target_modules, std::vector<std::string>{"all-linear"});
  EXPECT_DOUBLE_EQ(r.training.lr, 2e-4);
  EXPECT_DOUBLE_EQ(r.training.max_grad_norm, 0.3);
  EXPECT_EQ(r.training.optimizer, "paged_adamw");
  EXPECT_EQ(r.source, kSource);
  EXPECT_EQ(r.model.path, "builtin:tiny");
}

TEST(RecipeDefaults, DependentDefaultsResolve) {
  // target_regex replaces the default target_modules; int8 turns the default double_quant off.
  const Recipe r = parse_recipe(
      kValid + "adapter:\n  target_regex: .*\\.(q|v)_proj\nquantization:\n  type: int8\n", kSource);
  EXPECT_TRUE(r.adapter.target_modules.empty());
  EXPECT_FALSE(r.quantization.double_quant);
  const Recipe qalora =
      parse_recipe(kValid + "quantization:\n  type: int4\nadapter:\n  type: qalora\n", kSource);
  EXPECT_FALSE(qalora.quantization.double_quant);
}

TEST(RecipeOverrides, TypedValuesListsAndNestedKeys) {
  const std::vector<std::string> overrides = {
      "training.lr=1e-4",
      "training.max_steps=7",
      "training.seed=18446744073709551615",
      "output.overwrite=true",
      "adapter.target_modules=[q_proj, v_proj]",
      "adapter.alpha=32",
      "model.device=cuda:1",
      "data.fields={input: context}",
      "data.fields.instruction=question",
      "distributed.backend=gloo",  // the file has no distributed section
      "training.log_every=5",
      "training.log_every=10",  // the last one wins
  };
  const Recipe r = parse_recipe(kValid, kSource, overrides);
  EXPECT_DOUBLE_EQ(r.training.lr, 1e-4);
  EXPECT_EQ(r.training.max_steps, 7);
  EXPECT_EQ(r.training.seed, 18446744073709551615ull);
  EXPECT_TRUE(r.output.overwrite);
  EXPECT_EQ(r.adapter.target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_DOUBLE_EQ(r.adapter.alpha, 32);
  EXPECT_EQ(r.model.device, "cuda:1");
  EXPECT_EQ(r.data.fields, (std::map<std::string, std::string>{{"input", "context"},
                                                               {"instruction", "question"}}));
  EXPECT_EQ(r.distributed.backend, "gloo");
  EXPECT_EQ(r.training.log_every, 10);
  EXPECT_EQ(r.overrides, overrides);
}

TEST(RecipeOverrides, OverrideBeatsTheFile) {
  const Recipe r =
      parse_recipe(kValid + "training:\n  lr: 3.0e-4\n", kSource, {"training.lr=5e-5"});
  EXPECT_DOUBLE_EQ(r.training.lr, 5e-5);
  // and can repair an invalid file value
  EXPECT_NO_THROW(parse_recipe(kValid + "adapter:\n  r: 0\n", kSource, {"adapter.r=4"}));
}

TEST(RecipeOverrides, BadSyntaxIsAUsageError) {
  struct Case {
    std::string override_text;
    std::string text;
  };
  const std::vector<Case> cases = {
      {"training.lr", "expected key=value"},
      {"training.lerning_rate=1", "did you mean 'training.lr'?"},
      {"nosuchsection.x=1", "unknown key"},
      {"training=1", "expected section.key=value"},
      {"training.lr.x=1", "unknown key 'training.lr.x'"},
      {"adapter.target_modules=[q_proj", "not valid YAML"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.override_text);
    const Error e = parse_error(kValid, {c.override_text});
    EXPECT_EQ(e.kind(), ErrorKind::kUsage) << e.what();
    EXPECT_EQ(e.exit_code(), 2);
    EXPECT_NE(e.message().find("override '" + c.override_text + "'"), std::string::npos)
        << e.what();
    EXPECT_NE(e.message().find(c.text), std::string::npos) << e.what();
  }
}

TEST(RecipeOverrides, BadValuesNameTheKeyAndTheOverride) {
  for (const std::string& o : {std::string("training.lr=abc"), std::string("adapter.r=0"),
                               std::string("quantization.type=int4")}) {
    SCOPED_TRACE(o);
    const Error e = parse_error(kValid + "training:\n  lr: 1.0e-4\n", {o});
    EXPECT_EQ(e.kind(), ErrorKind::kConfig) << e.what();
    EXPECT_EQ(e.context().line, -1);
    EXPECT_EQ(e.context().field, o.substr(0, o.find('=')));
    EXPECT_NE(e.message().find("(set by override '" + o + "')"), std::string::npos) << e.what();
  }
}

Recipe unusual_recipe() {
  const std::string yaml = R"(model:
  path: "123"
  known_config: llama2-7b
  dtype: float16
  device: cuda:3
quantization:
  type: fp4
  blocksize: 4096
  double_quant: false
  skip_modules: [lm_head, mlp.down_proj]
adapter:
  r: 3
  alpha: 0.1
  dropout: 0
  rslora: true
  target_regex: 'model\.layers\.\d+\.self_attn\.(q|v)_proj'
  dtype: float32
  init_from: "adapters/a b: c"
data:
  path: "true"
  eval_path: null.jsonl
  format: chat
  template: chatml
  fields: {messages: conversations, role: from}
  max_seq_len: 8
  packing: true
  overlong: drop
  eval_fraction: 0.3333333333333333
  eval_max_samples: 0
training:
  micro_batch_size: 3
  lr: 0.00012345678901234567
  beta2: 0.95
  eps: 1.0e-12
  optimizer: adamw_8bit
  scheduler: linear
  warmup_steps: 0
  warmup_ratio: 0.1
  min_lr_ratio: 1
  max_grad_norm: 0
  gradient_checkpointing: false
  seed: 18446744073709551615
  on_nonfinite: skip
output:
  dir: "null"
  tensorboard: false
distributed:
  backend: none
)";
  return parse_recipe(yaml, kSource, {"training.epochs=3"});
}

TEST(RecipeRoundTrip, ResolvedYamlParsesBackToTheSameRecipe) {
  for (const Recipe& r : {parse_recipe(kValid, kSource), unusual_recipe()}) {
    const std::string yaml = recipe_to_yaml(r);
    const Recipe back = parse_recipe(yaml, "resolved.yaml");
    EXPECT_TRUE(back == r) << yaml;
    EXPECT_EQ(without_comments(recipe_to_yaml(back)), without_comments(yaml));
    for (const std::string& key : recipe_keys()) {
      const std::string field = key.substr(key.find('.') + 1);
      EXPECT_NE(yaml.find("\n  " + field + ":"), std::string::npos) << key << "\n" << yaml;
    }
  }
  const Recipe r = unusual_recipe();
  EXPECT_EQ(r.model.path, "123");
  EXPECT_EQ(r.data.path, "true");
  EXPECT_EQ(r.output.dir, "null");
  EXPECT_DOUBLE_EQ(r.training.lr, 0.00012345678901234567);
  EXPECT_EQ(r.training.epochs, 3);
  EXPECT_NE(recipe_to_yaml(r).find("training.epochs=3"), std::string::npos);
}

TEST(RecipeRoundTrip, EqualitySeesEveryField) {
  const Recipe base = parse_recipe(kValid, kSource);
  std::vector<std::function<void(Recipe&)>> changes = {
      [](Recipe& r) { r.model.device = "cpu"; },
      [](Recipe& r) { r.quantization.skip_modules.clear(); },
      [](Recipe& r) { r.adapter.alpha = 17; },
      [](Recipe& r) { r.data.fields["input"] = "x"; },
      [](Recipe& r) { r.training.seed = 1; },
      [](Recipe& r) { r.output.keep_last = 3; },
      [](Recipe& r) { r.distributed.backend = "gloo"; },
  };
  for (const auto& change : changes) {
    Recipe changed = base;
    change(changed);
    EXPECT_FALSE(changed == base);
  }
  Recipe provenance = base;
  provenance.source = "elsewhere.yaml";
  provenance.overrides = {"training.lr=1"};
  EXPECT_TRUE(provenance == base);
}

std::vector<std::string> shipped_recipes() {
  std::vector<std::string> paths;
  for (const auto& entry : std::filesystem::directory_iterator(testing::source_dir() + "/recipes"))
    if (entry.path().extension() == ".yaml") paths.push_back(entry.path().string());
  std::sort(paths.begin(), paths.end());
  return paths;
}

TEST(ShippedRecipes, EveryRecipeParsesRoundTripsAndPlans) {
  const std::vector<std::string> paths = shipped_recipes();
  EXPECT_GE(paths.size(), 8u);
  for (const std::string& path : paths) {
    SCOPED_TRACE(path);
    const Recipe r = load_recipe(path);
    EXPECT_TRUE(parse_recipe(recipe_to_yaml(r), "resolved.yaml") == r);
    const MemoryEstimate e = estimate_memory(r, recipe_model_config(r));
    EXPECT_GT(e.base_weights, 0);
    EXPECT_GT(e.adapter_param_count, 0);
    EXPECT_NE(describe_recipe(r, e).find("#   total"), std::string::npos);
  }
}

TEST(ShippedRecipes, TinyDefaultIsTheDocumentedOne) {
  const Recipe r = load_recipe(testing::source_dir() + "/recipes/tiny_qlora.yaml");
  EXPECT_EQ(r.model.path, "builtin:tiny");
  EXPECT_EQ(r.model.device, "cpu");
  EXPECT_EQ(r.training.max_steps, 120);
  EXPECT_DOUBLE_EQ(r.training.lr, 2e-3);
  EXPECT_EQ(r.data.path, "recipes/data/tiny_instruct.jsonl");
  EXPECT_EQ(r.adapter.dtype, "float32");
}

// Total parameters of the published checkpoints (embeddings, norms, biases included).
TEST(KnownModels, ParameterCountsMatchThePublishedModels) {
  const std::map<std::string, int64_t> published = {
      {"llama2-7b", 6738415616},  {"llama2-13b", 13015864320}, {"llama2-70b", 68976648192},
      {"llama3-8b", 8030261248},  {"llama3-70b", 70553706496}, {"mistral-7b", 7241732096},
      {"qwen2.5-7b", 7615616512},
  };
  ASSERT_EQ(published.size(), known_model_names().size());
  for (const auto& [name, count] : published) {
    int64_t total = 0;
    for (const TensorSpec& spec : hf_tensor_specs(known_model_config(name))) {
      int64_t numel = 1;
      for (int64_t d : spec.shape) numel *= d;
      total += numel;
    }
    EXPECT_EQ(total, count) << name;
  }
  EXPECT_THROW(known_model_config("llama4"), Error);
}

Recipe planning_recipe(const std::string& extra, const std::vector<std::string>& overrides = {}) {
  return parse_recipe(kValid + extra, kSource, overrides);
}

TEST(MemoryEstimate, AdapterParametersAreExact) {
  const ModelConfig llama7b = known_model_config("llama2-7b");
  const Recipe r = planning_recipe("adapter:\n  r: 64\n");
  // PEFT's figure for r=64 on every linear of Llama-2-7B, and the same from r*(in+out).
  const int64_t h = 4096, i = 11008, r64 = 64;
  const int64_t per_layer = 4 * r64 * (h + h) + 2 * r64 * (h + i) + r64 * (i + h);
  EXPECT_EQ(32 * per_layer, 159907840);
  const MemoryEstimate e = estimate_memory(r, llama7b);
  EXPECT_EQ(e.adapter_param_count, 159907840);
  EXPECT_EQ(e.adapter_params, 2 * 159907840);  // bfloat16
  EXPECT_EQ(e.adapter_grads, e.adapter_params);
  // AdamW: two float32 states, plus the float32 master of each bfloat16 adapter value.
  EXPECT_EQ(e.optimizer_states, (8 + 4) * 159907840);
  const MemoryEstimate f32 =
      estimate_memory(planning_recipe("adapter:\n  r: 64\n  dtype: float32\n"), llama7b);
  EXPECT_EQ(f32.optimizer_states, 8 * 159907840);  // float32 adapters are their own masters

  // PEFT's "trainable params: 4,194,304" for r=8 on q_proj and v_proj.
  const Recipe qv = planning_recipe("adapter:\n  target_modules: [q_proj, v_proj]\n");
  EXPECT_EQ(estimate_memory(qv, llama7b).adapter_param_count, 4194304);
  const Recipe qv_regex = planning_recipe("adapter:\n  target_regex: .*\\.(q|v)_proj\n");
  EXPECT_EQ(estimate_memory(qv_regex, llama7b).adapter_param_count, 4194304);
  // lm_head is not part of all-linear, but can be named
  const Recipe head = planning_recipe("adapter:\n  target_modules: [lm_head]\n");
  EXPECT_EQ(estimate_memory(head, llama7b).adapter_param_count, 8 * (4096 + 32000));

  const Recipe fp32 = planning_recipe("adapter:\n  r: 64\n  dtype: float32\n");
  EXPECT_EQ(estimate_memory(fp32, llama7b).adapter_params, 4 * 159907840);
}

TEST(MemoryEstimate, QaLoraAdaptersActOnPooledInputs) {
  const ModelConfig llama7b = known_model_config("llama2-7b");
  const Recipe r = planning_recipe(
      "quantization:\n  type: int4\n  group_size: 32\nadapter:\n  type: qalora\n  r: 64\n");
  const int64_t h = 4096, i = 11008, g = 32, r64 = 64;
  const int64_t per_layer = 4 * r64 * (h / g + h) + 2 * r64 * (h / g + i) + r64 * (i / g + h);
  EXPECT_EQ(estimate_memory(r, llama7b).adapter_param_count, 32 * per_layer);
}

TEST(MemoryEstimate, BaseWeightsEqualTheQuantizedModelBytes) {
  const ModelConfig llama8b = known_model_config("llama3-8b");
  QuantConfig nf4;
  nf4.type = QuantType::kNF4;
  nf4.blocksize = 64;
  nf4.double_quant = true;
  EXPECT_EQ(estimate_memory(planning_recipe(""), llama8b).base_weights,
            quantized_model_bytes(llama8b, nf4, {"lm_head"}, at::kBFloat16).total());

  QuantConfig int8;
  int8.type = QuantType::kInt8;
  int8.blocksize = 256;
  EXPECT_EQ(
      estimate_memory(planning_recipe("quantization:\n  type: int8\n  blocksize: 256\n"), llama8b)
          .base_weights,
      quantized_model_bytes(llama8b, int8, {"lm_head"}, at::kBFloat16).total());

  // Dense: exactly 2 bytes per parameter in bfloat16.
  EXPECT_EQ(estimate_memory(planning_recipe("quantization:\n  type: none\n"), llama8b).base_weights,
            2 * 8030261248);

  // INT4 groups of 32: half a byte per weight plus float32 scale and zero per 32 weights.
  const ModelBytes dense = quantized_model_bytes(llama8b, nf4, {"lm_head"}, at::kBFloat16);
  const Recipe int4 =
      planning_recipe("quantization:\n  type: int4\n  group_size: 32\nadapter:\n  type: qalora\n");
  EXPECT_EQ(estimate_memory(int4, llama8b).base_weights,
            dense.quantized_params / 2 + dense.quantized_params / 32 * 8 + dense.unquantized);
}

TEST(MemoryEstimate, ActivationsFollowBatchAndCheckpointing) {
  const ModelConfig llama8b = known_model_config("llama3-8b");
  const MemoryEstimate ckpt = estimate_memory(planning_recipe(""), llama8b);
  const MemoryEstimate full =
      estimate_memory(planning_recipe("", {"training.gradient_checkpointing=false"}), llama8b);
  EXPECT_LT(ckpt.activations * 5, full.activations);

  // Linear in the number of tokens, whichever way they are batched, plus a constant: backward's
  // working set here is the largest projection dequantized to bfloat16 (mlp [14336, 4096]), more
  // than the two [tokens, 14336] gradients of gate and up.
  const MemoryEstimate four = estimate_memory(
      planning_recipe("", {"training.micro_batch_size=4", "data.max_seq_len=256"}), llama8b);
  const MemoryEstimate two = estimate_memory(
      planning_recipe("", {"training.micro_batch_size=2", "data.max_seq_len=512"}), llama8b);
  const int64_t dequantized = 14336LL * 4096 * 2;
  EXPECT_EQ(four.activations - dequantized, 2 * (ckpt.activations - dequantized));
  EXPECT_EQ(four.activations, two.activations);
  // One chunk of 1024 loss tokens (the default): lm_head's bfloat16 output [1024, vocab], one
  // float32 block of 128 rows, the chunk rows' gradient, plus the gathered bf16 hidden rows of
  // every token and their gradient.
  const int64_t row = 2 * 4096;
  const int64_t vocab = 128256;
  auto logits = [&](int64_t chunk, int64_t tokens) {
    return chunk * vocab * 2 + std::min<int64_t>(chunk, 128) * vocab * 4 + chunk * row +
           2 * tokens * row;
  };
  EXPECT_EQ(four.logits, logits(1024, 1024));
  EXPECT_EQ(ckpt.logits, logits(512, 512));  // 512 tokens: one smaller chunk
  const MemoryEstimate small_chunks =
      estimate_memory(planning_recipe("", {"training.micro_batch_size=4", "data.max_seq_len=256",
                                           "training.loss_chunk_tokens=128"}),
                      llama8b);
  EXPECT_EQ(small_chunks.logits, logits(128, 1024));
  const MemoryEstimate one_chunk =
      estimate_memory(planning_recipe("", {"training.micro_batch_size=4", "data.max_seq_len=512",
                                           "training.loss_chunk_tokens=0"}),
                      llama8b);
  EXPECT_EQ(one_chunk.logits, logits(2048, 2048));

  // The peak of two phases: backward (activations), or the loss beside what forward keeps (the
  // 32 layers' inputs and the final norm's input, output and rstd).
  const int64_t states =
      ckpt.base_weights + ckpt.adapter_params + ckpt.adapter_grads + ckpt.optimizer_states;
  const int64_t loss_phase = 512 * (32 * row + 2 * row + 4) + ckpt.logits;
  EXPECT_EQ(ckpt.total, states + std::max(ckpt.activations, loss_phase));
}

TEST(MemoryEstimate, EightBitOptimizerStates) {
  const ModelConfig llama8b = known_model_config("llama3-8b");
  const MemoryEstimate e =
      estimate_memory(planning_recipe("training:\n  optimizer: paged_adamw_8bit\n"), llama8b);
  // Every lora_A/B here has >= 4096 values and a multiple of 256: 2 bytes + 8 bytes per 256.
  // Plus the float32 masters of the bfloat16 adapters.
  EXPECT_EQ(e.optimizer_states, e.adapter_param_count * 2 + e.adapter_param_count / 256 * 8 +
                                    e.adapter_param_count * 4);
}

TEST(MemoryEstimate, HostEmbeddingsAndOffloadedActivationsLeaveTheDevice) {
  const ModelConfig llama8b = known_model_config("llama3-8b");
  const std::vector<std::string> base = {"data.max_seq_len=2048", "training.micro_batch_size=2",
                                         "model.device=auto"};
  auto with = [&](std::vector<std::string> more) {
    more.insert(more.begin(), base.begin(), base.end());
    return estimate_memory(planning_recipe("", more), llama8b);
  };
  const MemoryEstimate plain = with({});
  const MemoryEstimate moved =
      with({"training.offload_activations=true", "model.embeddings_on_host=true"});
  const int64_t table = 128256LL * 4096 * 2;  // bfloat16 [V, H]
  EXPECT_EQ(plain.host_embeddings, 0);
  EXPECT_EQ(moved.host_embeddings, table);
  EXPECT_EQ(moved.base_weights, plain.base_weights - table);
  // 30 of 32 layer inputs [2, 2048, 4096] bfloat16 go to the host; the device keeps 4.
  const int64_t input = 2LL * 2048 * 4096 * 2;
  EXPECT_EQ(moved.host_activations, 30 * input);
  EXPECT_EQ(plain.activations - moved.activations, (32 - 4) * input);
  EXPECT_EQ(moved.total, plain.total - table - (32 - 4) * input);
  // On the CPU there is no device memory to save: nothing moves.
  const MemoryEstimate cpu = with(
      {"training.offload_activations=true", "model.embeddings_on_host=true", "model.device=cpu"});
  EXPECT_EQ(cpu.host_activations + cpu.host_embeddings, 0);
  EXPECT_EQ(cpu.activations, plain.activations);
}

TEST(DryRun, DescribesTheRecipeAndTheTable) {
  const Recipe r = planning_recipe("");
  const MemoryEstimate e = estimate_memory(r, recipe_model_config(r));
  const std::string text = describe_recipe(r, e);
  EXPECT_EQ(text.rfind(recipe_to_yaml(r), 0), 0u);
  EXPECT_NE(text.find("#   base weights"), std::string::npos) << text;
  EXPECT_TRUE(parse_recipe(text, "dry-run.yaml") == r);  // the table is all comments
}

}  // namespace
}  // namespace qtrain
