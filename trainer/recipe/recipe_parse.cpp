// Recipe text -> Recipe: the YAML tree is walked against the schema (recipe_fields.h), each
// value converted strictly to its field's type, then the command-line overrides are applied,
// defaults that depend on other settings are resolved, and the result is validated.
#include "core/cpu_capabilities.h"
#include "core/error.h"
#include "core/read_file.h"
#include "data/unicode_text.h"
#include "trainer/recipe/recipe.h"
#include "trainer/recipe/recipe_fields.h"
#include "trainer/recipe/recipe_keys.h"
#include "trainer/recipe/recipe_origins.h"
#include "trainer/recipe/recipe_validate.h"
#include "trainer/recipe/yaml_text.h"

#include <ATen/Context.h>
#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>
#include <sstream>

namespace qtrain {
namespace {

int64_t line_of(const YAML::Node& node) {
  return node.Mark().line + 1;
}

std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      return "nothing";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Scalar:
      break;
  }
  return (node.Tag() == "!" ? "the quoted string '" : "'") + node.Scalar() + "'";
}

// YAML aliases let a small recipe repeat one large value many times (`[&big <1 MiB>, *big,
// *big, ...]`), and each use is copied into the recipe. Counts the uses of a value after its
// first, over the whole recipe, overrides included. Only aliases spend: a recipe written out
// (the resolved one) never does, so it always parses back.
class AliasBudget {
 public:
  static constexpr size_t kMaxBytes = 16 * kMiB;
  static constexpr size_t kMaxUses = 100'000;

  // Overrides are YAML documents of their own, with positions that start again from 0.
  void start_document() { ++document_; }

  // An alias refers to its anchor's node itself, so a node seen again is a repeat.
  void spend(const YAML::Node& node, const RecipeOrigins& origins, const std::string& key) {
    if (first_uses_.insert({document_, node.Mark().pos}).second) return;
    bytes_ += node.Scalar().size();
    ++uses_;
    if (bytes_ > kMaxBytes || uses_ > kMaxUses) {
      origins.fail(key, "YAML aliases expand to more than " + byte_limit_text(kMaxBytes) +
                            " of text or " + std::to_string(kMaxUses) +
                            " values (write the values out instead)");
    }
  }

 private:
  int document_ = 0;
  std::set<std::pair<int, int>> first_uses_;
  size_t bytes_ = 0;
  size_t uses_ = 0;
};

// Converts one YAML value into a field of its type; failures name the field and its origin.
class FieldReader {
 public:
  FieldReader(const RecipeOrigins& origins, std::string key, AliasBudget& budget)
      : origins_(origins), key_(std::move(key)), budget_(budget) {}

  void read(const YAML::Node& node, std::string& out) const {
    if (node.IsNull()) {
      out.clear();
    } else if (node.IsScalar()) {
      out = text_of(node);
    } else {
      fail("expected a string", node);
    }
  }

  void read(const YAML::Node& node, int64_t& out) const {
    out = convert<int64_t>(node, "an integer");
  }

  void read(const YAML::Node& node, uint64_t& out) const {
    if (is_plain_scalar(node) && !node.Scalar().empty() && node.Scalar()[0] == '-')
      fail("expected a non-negative integer", node);
    out = convert<uint64_t>(node, "a non-negative integer");
  }

  void read(const YAML::Node& node, double& out) const {
    out = convert<double>(node, "a number");
    if (!std::isfinite(out)) fail("expected a finite number", node);
  }

  void read(const YAML::Node& node, bool& out) const { out = convert<bool>(node, "true or false"); }

  // A list of strings; a lone string is a list of one.
  void read(const YAML::Node& node, std::vector<std::string>& out) const {
    out.clear();
    if (node.IsNull()) return;
    if (node.IsScalar()) {
      out.push_back(text_of(node));
      return;
    }
    if (!node.IsSequence()) fail("expected a list of strings", node);
    for (const YAML::Node& item : node) {
      if (!item.IsScalar()) fail("expected a list of strings, found " + describe(item), item);
      out.push_back(text_of(item));
    }
  }

  void read(const YAML::Node& node, std::map<std::string, std::string>& out) const {
    out.clear();
    if (node.IsNull()) return;
    if (!node.IsMap()) fail("expected a mapping of strings", node);
    for (const auto& entry : node) {
      if (!entry.first.IsScalar() || !entry.second.IsScalar())
        fail("expected a mapping of strings, found " + describe(entry.second), entry.second);
      out[text_of(entry.first)] = text_of(entry.second);
    }
  }

 private:
  // A string value. The text is printable UTF-8 by now, but a double-quoted escape ("\0",
  // "\x7f") can still produce a character that YAML text may not hold: no path or name needs
  // one, and the resolved recipe could not show it. yaml-cpp refuses surrogate escapes but
  // writes \_ and \N as the Latin-1 bytes A0 and 85 (found by fuzz_recipe).
  std::string text_of(const YAML::Node& node) const {
    const std::string& text = node.Scalar();
    budget_.spend(node, origins_, key_);
    // Not through fail(): its ", got <value>" would print the offending bytes.
    if (!is_valid_utf8(text)) {
      origins_.fail(key_,
                    "the string is not valid UTF-8 (yaml-cpp turns the escapes \\_ and \\N into "
                    "single bytes; write the character itself)");
    }
    if (const std::string bad = first_unprintable(text, "character"); !bad.empty())
      origins_.fail(key_, "the string contains control character " + bad);
    return text;
  }

  static bool is_plain_scalar(const YAML::Node& node) {
    return node.IsScalar() && node.Tag() != "!";
  }

  // A quoted scalar is a string even when it looks like a number.
  template <class T>
  T convert(const YAML::Node& node, const std::string& expected) const {
    if (!is_plain_scalar(node)) fail("expected " + expected, node);
    budget_.spend(node, origins_, key_);
    try {
      return node.as<T>();
    } catch (const YAML::Exception&) {
      fail("expected " + expected, node);
    }
  }

  [[noreturn]] void fail(const std::string& message, const YAML::Node& node) const {
    origins_.fail(key_, message + ", got " + describe(node));
  }

  const RecipeOrigins& origins_;
  std::string key_;
  AliasBudget& budget_;
};

// Calls fn(member) on the field `section`.`field` of `recipe`; false when there is none.
template <class Fn>
bool with_field(Recipe& recipe, const std::string& section, const std::string& field, Fn&& fn) {
  bool found = false;
  recipe_schema::for_each_section(recipe, [&](const char* section_name, auto& s) {
    if (found || section != section_name) return;
    recipe_schema::for_each_field(s, [&](const char* field_name, auto& member) {
      if (found || field != field_name) return;
      found = true;
      fn(member);
    });
  });
  return found;
}

std::string too_deep_message() {
  return "too deeply nested: more than " + std::to_string(kMaxYamlDepth) +
         " levels of lists and mappings";
}

// Stops a parse at the start of the second document: yaml-cpp's Load reads the first one only,
// so a recipe's settings after a "---" line would be dropped without a word.
class SecondDocumentRefusal : public YAML::EventHandler {
 public:
  explicit SecondDocumentRefusal(const std::string& source) : source_(source) {}

  void OnDocumentStart(const YAML::Mark& mark) override {
    if (++documents_ < 2) return;
    throw_error(ErrorKind::kConfig,
                "a second YAML document starts here; a recipe is one document (remove the '---' "
                "line and what follows, or merge it into the recipe)",
                {.file = source_, .line = mark.line + 1});
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}

 private:
  const std::string& source_;
  int documents_ = 0;
};

void refuse_second_document(const std::string& text, const std::string& source) {
  std::istringstream in(text);
  YAML::Parser parser(in);
  SecondDocumentRefusal handler(source);
  while (parser.HandleNextDocument(handler)) {
  }
}

YAML::Node load_yaml(const std::string& text, const std::string& source) {
  // yaml-cpp's parser recurses once per level: refuse deep nesting before it runs.
  if (const int64_t line = line_nested_deeper_than(text, kMaxYamlDepth); line > 0)
    throw_error(ErrorKind::kConfig, too_deep_message(), {.file = source, .line = line});
  try {
    refuse_second_document(text, source);
    return YAML::Load(text);
  } catch (const YAML::DeepRecursion& e) {  // "bad file": deeper than the scan above counted
    throw_error(ErrorKind::kConfig, too_deep_message(), {.file = source, .line = e.mark.line + 1});
  } catch (const YAML::ParserException& e) {
    throw_error(ErrorKind::kConfig, "malformed YAML: " + e.msg,
                {.file = source, .line = e.mark.line + 1});
  }
}

void read_section(const YAML::Node& node, const std::string& section, Recipe& recipe,
                  RecipeOrigins& origins, AliasBudget& budget) {
  if (node.IsNull()) return;  // "distributed:" with nothing under it: all defaults
  if (!node.IsMap()) origins.fail(section, "expected a mapping of keys, got " + describe(node));
  std::set<std::string> seen;
  for (const auto& entry : node) {
    const YAML::Node& key_node = entry.first;
    const std::string key = section + "." + (key_node.IsScalar() ? key_node.Scalar() : "?");
    const int64_t line = line_of(key_node);
    if (!seen.insert(key).second) {
      throw_error(ErrorKind::kConfig, "duplicate key '" + key + "'",
                  {.file = origins.source(), .field = key, .line = line});
    }
    const YAML::Node& value = entry.second;
    origins.set_line(key, line);
    const FieldReader reader(origins, key, budget);
    const bool known =
        key_node.IsScalar() && with_field(recipe, section, key_node.Scalar(),
                                          [&](auto& member) { reader.read(value, member); });
    if (!known) {
      throw_error(ErrorKind::kConfig, unknown_key_message(key),
                  {.file = origins.source(), .field = key, .line = line});
    }
  }
}

void read_file_settings(const YAML::Node& root, Recipe& recipe, RecipeOrigins& origins,
                        AliasBudget& budget) {
  if (root.IsNull()) return;
  if (!root.IsMap()) {
    throw_error(ErrorKind::kConfig,
                "a recipe is a mapping of sections (model:, data:, ...), got " + describe(root),
                {.file = origins.source(), .line = line_of(root)});
  }
  std::set<std::string> seen;
  for (const auto& entry : root) {
    const std::string name = entry.first.IsScalar() ? entry.first.Scalar() : "?";
    const int64_t line = line_of(entry.first);
    const auto& sections = recipe_sections();
    if (std::find(sections.begin(), sections.end(), name) == sections.end()) {
      throw_error(ErrorKind::kConfig, unknown_key_message(name),
                  {.file = origins.source(), .field = name, .line = line});
    }
    if (!seen.insert(name).second) {
      throw_error(ErrorKind::kConfig, "duplicate section '" + name + "'",
                  {.file = origins.source(), .field = name, .line = line});
    }
    origins.set_line(name, line);
    read_section(entry.second, name, recipe, origins, budget);
  }
}

[[noreturn]] void bad_override(const std::string& text, const std::string& problem) {
  throw_error(ErrorKind::kUsage, "override '" + text + "': " + problem);
}

// "section.field=value", or "section.field.entry=value" for a mapping field (data.fields).
void apply_override(const std::string& text, Recipe& recipe, RecipeOrigins& origins,
                    AliasBudget& budget) {
  const size_t equals = text.find('=');
  if (equals == std::string::npos) bad_override(text, "expected key=value, e.g. training.lr=1e-4");
  const std::string key = text.substr(0, equals);
  const std::string value_text = text.substr(equals + 1);
  const size_t dot = key.find('.');
  if (dot == std::string::npos)
    bad_override(text, "expected section.key=value, e.g. training.lr=1e-4");
  const size_t entry_dot = key.find('.', dot + 1);
  const std::string section = key.substr(0, dot);
  const std::string field = key.substr(dot + 1, entry_dot - dot - 1);
  const std::string entry = entry_dot == std::string::npos ? "" : key.substr(entry_dot + 1);
  const std::string field_key = section + "." + field;

  bool is_mapping_field = false;
  const bool known = with_field(recipe, section, field, [&](auto& m) {
    is_mapping_field =
        std::is_same_v<std::decay_t<decltype(m)>, std::map<std::string, std::string>>;
  });
  if (!known || (!entry.empty() && !is_mapping_field)) bad_override(text, unknown_key_message(key));

  YAML::Node value;
  try {
    if (line_nested_deeper_than(value_text, kMaxYamlDepth) > 0)
      bad_override(text, "the value is not valid YAML: " + too_deep_message());
    value = YAML::Load(value_text);
  } catch (const YAML::DeepRecursion&) {
    bad_override(text, "the value is not valid YAML: " + too_deep_message());
  } catch (const YAML::ParserException& e) {
    bad_override(text, "the value is not valid YAML: " + e.msg);
  }
  origins.set_override(field_key, text);
  budget.start_document();
  const FieldReader reader(origins, field_key, budget);
  with_field(recipe, section, field, [&](auto& member) {
    using T = std::decay_t<decltype(member)>;
    if constexpr (std::is_same_v<T, std::map<std::string, std::string>>) {
      if (!entry.empty()) {
        std::string one;
        reader.read(value, one);
        member[entry] = one;
        return;
      }
    }
    reader.read(value, member);
  });
}

// Defaults that depend on other settings, so the resolved recipe states what will happen.
void resolve_dependent_defaults(Recipe& recipe, const RecipeOrigins& origins) {
  if (!recipe.adapter.target_regex.empty() && !origins.is_explicit("adapter.target_modules"))
    recipe.adapter.target_modules.clear();
  const std::string& quant = recipe.quantization.type;
  if (quant != "nf4" && quant != "fp4" && !origins.is_explicit("quantization.double_quant"))
    recipe.quantization.double_quant = false;
}

}  // namespace

namespace {

// YAML is UTF-8 text; yaml-cpp would pass stray bytes through into strings (paths), where they
// change meaning on the way back out (found by fuzz_recipe). UTF-8 never uses the newline byte
// inside a character, so each line can be checked alone and named.
void check_yaml_text_lines(const std::string& text, const std::string& source) {
  int64_t line = 1;
  for (size_t begin = 0; begin <= text.size(); ++line) {
    const size_t end = std::min(text.find('\n', begin), text.size());
    const std::string_view content = std::string_view(text).substr(begin, end - begin);
    if (!is_valid_utf8(content)) {
      throw_error(ErrorKind::kConfig, "not valid UTF-8 text (save the recipe as UTF-8)",
                  {.file = source, .line = line});
    }
    if (const std::string bad = first_unprintable(content, "column"); !bad.empty()) {
      throw_error(ErrorKind::kConfig,
                  "control character " + bad +
                      " is not allowed in YAML text (only printable characters, tab and line "
                      "breaks are)",
                  {.file = source, .line = line});
    }
    begin = end + 1;
  }
}

}  // namespace

namespace {

// model.dtype auto (the default): bfloat16 where matmuls have it natively (CUDA, AMX or
// AVX512-BF16 CPUs), float32 on other CPUs, where bfloat16 runs through conversions. adapter.dtype
// auto (the default) follows it: float32 adapters for a float32 model, else bfloat16.
void resolve_auto_dtype(Recipe& recipe) {
  if (recipe.model.dtype == "auto") {
    const std::string& device = recipe.model.device;
    const bool cuda =
        device.rfind("cuda", 0) == 0 || (device == "auto" && at::hasCUDA() && at::getNumGPUs() > 0);
    const std::string bf16 = cuda ? std::string() : cpu_bf16_instructions();
    recipe.model.dtype = cuda || !bf16.empty() ? "bfloat16" : "float32";
    recipe.dtype_auto_reason =
        cuda ? "CUDA"
             : (bf16.empty() ? "a CPU without bf16 matrix instructions" : "a CPU with " + bf16);
  }
  if (recipe.adapter.dtype == "auto") {
    recipe.adapter.dtype = recipe.model.dtype == "float32" ? "float32" : "bfloat16";
  }
}

}  // namespace

Recipe parse_recipe(const std::string& yaml_text, const std::string& source,
                    const std::vector<std::string>& overrides) {
  RecipeOrigins origins(source);
  AliasBudget budget;
  Recipe recipe;
  // A recipe file chooses its dtypes by the machine unless it names them; a Recipe built in code
  // keeps the struct's fixed defaults.
  recipe.model.dtype = "auto";
  recipe.adapter.dtype = "auto";
  const std::string text_lf = normalize_line_breaks(yaml_text);
  check_yaml_text_lines(text_lf, source);
  read_file_settings(load_yaml(text_lf, source), recipe, origins, budget);
  for (const std::string& given : overrides) {
    // A CR from a script saved with Windows line endings ends the value, as in the file.
    const std::string text = normalize_line_breaks(given);
    if (!is_valid_utf8(text)) {
      throw_error(ErrorKind::kUsage, "override is not valid UTF-8 text");
    }
    if (const std::string bad = first_unprintable(text, "character"); !bad.empty()) {
      throw_error(ErrorKind::kUsage,
                  "override contains control character " + bad + ", which YAML does not allow");
    }
    apply_override(text, recipe, origins, budget);
  }
  resolve_dependent_defaults(recipe, origins);
  validate_recipe(recipe, origins);
  resolve_auto_dtype(recipe);
  recipe.source = source;
  recipe.overrides = overrides;
  return recipe;
}

Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw_error(ErrorKind::kIo, "a recipe must be a YAML file, not a directory", {.file = path});
  return parse_recipe(read_small_file(path, kMaxRecipeBytes, "recipe"), path, overrides);
}

}  // namespace qtrain
