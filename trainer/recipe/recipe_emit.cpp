// Recipe -> YAML (every key, schema order) and settings equality, both walking the schema.
#include "trainer/recipe/recipe.h"
#include "trainer/recipe/recipe_fields.h"
#include "trainer/recipe/yaml_text.h"

#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <cstdlib>

namespace qtrain {
namespace {

// The shortest decimal that reads back as exactly `value` ("0.0002", not 0.00020000000000000001).
std::string shortest_decimal(double value) {
  char buffer[32];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buffer, sizeof buffer, "%.*g", precision, value);
    if (std::strtod(buffer, nullptr) == value) break;
  }
  return buffer;
}

// yaml-cpp writes a carriage return raw in a plain scalar, where YAML (and yaml-cpp itself, when
// a newline follows) reads it as a line break; double quotes keep it as "\r" (found by
// fuzz_recipe).
void emit(YAML::Emitter& out, const std::string& v) {
  if (v.find('\r') != std::string::npos) out << YAML::DoubleQuoted;
  out << v;
}
void emit(YAML::Emitter& out, int64_t v) {
  out << std::to_string(v);
}
void emit(YAML::Emitter& out, uint64_t v) {
  out << std::to_string(v);
}
void emit(YAML::Emitter& out, double v) {
  out << shortest_decimal(v);
}
void emit(YAML::Emitter& out, bool v) {
  out << (v ? "true" : "false");
}
void emit(YAML::Emitter& out, const std::vector<std::string>& v) {
  out << YAML::Flow << YAML::BeginSeq;
  for (const std::string& item : v) emit(out, item);
  out << YAML::EndSeq;
}
void emit(YAML::Emitter& out, const std::map<std::string, std::string>& v) {
  out << YAML::Flow << YAML::BeginMap;
  for (const auto& [key, value] : v) {
    out << YAML::Key;
    emit(out, key);
    out << YAML::Value;
    emit(out, value);
  }
  out << YAML::EndMap;
}

// Addresses of a section's fields in schema order.
template <class Section>
std::vector<const void*> field_addresses(const Section& section) {
  std::vector<const void*> addresses;
  recipe_schema::for_each_field(
      section, [&](const char*, const auto& member) { addresses.push_back(&member); });
  return addresses;
}

template <class Section>
bool same_fields(const Section& a, const Section& b) {
  const std::vector<const void*> other = field_addresses(b);
  size_t index = 0;
  bool equal = true;
  recipe_schema::for_each_field(a, [&](const char*, const auto& member) {
    using T = std::decay_t<decltype(member)>;
    equal = equal && member == *static_cast<const T*>(other[index]);
    ++index;
  });
  return equal;
}

}  // namespace

std::string recipe_to_yaml(const Recipe& recipe) {
  YAML::Emitter out;
  out << YAML::Comment(
      "qtrain recipe, fully resolved" +
      (recipe.source.empty() ? std::string() : " from " + comment_safe(recipe.source)));
  if (!recipe.overrides.empty()) {
    std::string overrides;
    for (const std::string& o : recipe.overrides) overrides += " " + comment_safe(o);
    out << YAML::Newline << YAML::Comment("overrides:" + overrides);
  }
  out << YAML::BeginMap;
  recipe_schema::for_each_section(recipe, [&](const char* section, const auto& s) {
    out << YAML::Key << section << YAML::Value << YAML::BeginMap;
    recipe_schema::for_each_field(s, [&](const char* field, const auto& member) {
      out << YAML::Key << field << YAML::Value;
      emit(out, member);
    });
    out << YAML::EndMap;
  });
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

bool operator==(const Recipe& a, const Recipe& b) {
  return same_fields(a.model, b.model) && same_fields(a.quantization, b.quantization) &&
         same_fields(a.adapter, b.adapter) && same_fields(a.data, b.data) &&
         same_fields(a.training, b.training) && same_fields(a.output, b.output) &&
         same_fields(a.distributed, b.distributed);
}

}  // namespace qtrain
