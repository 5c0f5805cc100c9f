#include "trainer/recipe/yaml_text.h"

#include "data/unicode_text.h"

#include <cstdio>

namespace qtrain {
namespace {

// YAML 1.2's c-printable set: TAB, LF, CR, and everything printable from U+0020 on except DEL,
// the C1 controls other than NEL, and U+FFFE/U+FFFF.
bool is_yaml_printable(char32_t c) {
  if (c < 0x20) return c == '\t' || c == '\n' || c == '\r';
  if (c >= 0x7F && c <= 0x9F) return c == 0x85;
  return c != 0xFFFE && c != 0xFFFF;
}

}  // namespace

std::string first_unprintable(std::string_view text, const char* place) {
  for (size_t pos = 0, index = 1; pos < text.size(); ++index) {
    const char32_t c = next_code_point(text, &pos);
    if (!is_yaml_printable(c)) {
      char code[16];
      std::snprintf(code, sizeof(code), "U+%04X", static_cast<unsigned>(c));
      return std::string(code) + " (" + place + " " + std::to_string(index) + ")";
    }
  }
  return {};
}

std::string normalize_line_breaks(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '\r') {
      out += text[i];
    } else if (i + 1 >= text.size() || text[i + 1] != '\n') {
      out += '\n';
    }
  }
  return out;
}

std::string comment_safe(std::string_view text) {
  const std::string valid = utf8_lossy(text);
  std::string out;
  char escape[16];
  for (size_t pos = 0; pos < valid.size();) {
    const size_t start = pos;
    const char32_t c = next_code_point(valid, &pos);
    if (is_yaml_printable(c) && c != '\t' && c != '\n' && c != '\r' && c != 0x85) {
      out.append(valid, start, pos - start);
    } else {
      std::snprintf(escape, sizeof(escape), c < 0x80 ? "\\x%02X" : "\\u%04X",
                    static_cast<unsigned>(c));
      out += escape;
    }
  }
  return out;
}

}  // namespace qtrain
