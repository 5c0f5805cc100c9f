#include "data/byte_level.h"

#include "data/unicode_text.h"

namespace qtrain {

namespace {

bool stands_for_itself(int byte) {
  return (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) || byte >= 0xAE;
}

std::array<char32_t, 256> make_code_points() {
  std::array<char32_t, 256> code_points{};
  char32_t next = 0x100;
  for (int byte = 0; byte < 256; ++byte) {
    code_points[byte] = stands_for_itself(byte) ? static_cast<char32_t>(byte) : next++;
  }
  return code_points;
}

const std::array<char32_t, 256>& code_points() {
  static const std::array<char32_t, 256> table = make_code_points();
  return table;
}

}  // namespace

const std::array<std::string, 256>& byte_level_chars() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> chars;
    for (int byte = 0; byte < 256; ++byte) append_utf8(code_points()[byte], chars[byte]);
    return chars;
  }();
  return table;
}

std::string to_byte_level(std::string_view bytes) {
  const auto& chars = byte_level_chars();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char b : bytes) out += chars[static_cast<unsigned char>(b)];
  return out;
}

bool from_byte_level(std::string_view text, std::string* out) {
  // Every character of the alphabet is below U+0144: index the inverse table by code point.
  static const std::array<int16_t, 0x144> inverse = [] {
    std::array<int16_t, 0x144> table;
    table.fill(-1);
    for (int byte = 0; byte < 256; ++byte) table[code_points()[byte]] = static_cast<int16_t>(byte);
    return table;
  }();
  if (!is_valid_utf8(text)) return false;
  out->clear();
  size_t pos = 0;
  while (pos < text.size()) {
    const char32_t c = next_code_point(text, &pos);
    if (c >= inverse.size() || inverse[c] < 0) return false;
    *out += static_cast<char>(inverse[c]);
  }
  return true;
}

}  // namespace qtrain
