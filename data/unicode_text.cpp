#include "data/unicode_text.h"

#include "core/error.h"

#include <utf8proc.h>

#include <cstdlib>
#include <memory>

namespace qtrain {

namespace {

// The number of continuation bytes after `lead`, and the range its first continuation byte must
// lie in (Unicode table 3-7); -1 for a byte that cannot start a sequence.
struct LeadByte {
  int continuations;
  unsigned char first_low, first_high;
};

LeadByte lead_byte(unsigned char b) {
  if (b >= 0xC2 && b <= 0xDF) return {1, 0x80, 0xBF};
  if (b == 0xE0) return {2, 0xA0, 0xBF};
  if (b == 0xED) return {2, 0x80, 0x9F};
  if (b >= 0xE1 && b <= 0xEF) return {2, 0x80, 0xBF};
  if (b == 0xF0) return {3, 0x90, 0xBF};
  if (b >= 0xF1 && b <= 0xF3) return {3, 0x80, 0xBF};
  if (b == 0xF4) return {3, 0x80, 0x8F};
  return {-1, 0, 0};
}

// The length of the valid sequence at bytes[pos] (>= 1), or -(bytes of its maximal invalid
// subpart, >= 1) when it is not valid.
int sequence_length(std::string_view bytes, size_t pos) {
  const auto b = static_cast<unsigned char>(bytes[pos]);
  if (b < 0x80) return 1;
  const LeadByte lead = lead_byte(b);
  if (lead.continuations < 0) return -1;
  int good = 0;
  for (int k = 1; k <= lead.continuations; ++k) {
    if (pos + k >= bytes.size()) break;
    const auto c = static_cast<unsigned char>(bytes[pos + k]);
    const unsigned char low = k == 1 ? lead.first_low : 0x80;
    const unsigned char high = k == 1 ? lead.first_high : 0xBF;
    if (c < low || c > high) break;
    ++good;
  }
  if (good == lead.continuations) return 1 + good;
  return -(1 + good);
}

}  // namespace

void append_utf8(char32_t c, std::string& out) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

bool is_valid_utf8(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    if (static_cast<unsigned char>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const int n = sequence_length(text, pos);
    if (n < 0) return false;
    pos += n;
  }
  return true;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    const int n = sequence_length(bytes, pos);
    if (n > 0) {
      out.append(bytes.data() + pos, n);
      pos += n;
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD
      pos += -n;
    }
  }
  return out;
}

char32_t next_code_point(std::string_view text, size_t* pos) {
  const auto b = static_cast<unsigned char>(text[*pos]);
  int extra = b < 0x80 ? 0 : b < 0xE0 ? 1 : b < 0xF0 ? 2 : 3;
  char32_t c = extra == 0 ? b : extra == 1 ? (b & 0x1F) : extra == 2 ? (b & 0x0F) : (b & 0x07);
  ++*pos;
  for (; extra > 0; --extra, ++*pos) c = (c << 6) | (static_cast<unsigned char>(text[*pos]) & 0x3F);
  return c;
}

char32_t previous_code_point(std::string_view text, size_t* end) {
  size_t start = *end - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  size_t pos = start;
  const char32_t c = next_code_point(text, &pos);
  *end = start;
  return c;
}

bool is_unicode_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

namespace {

std::string utf8proc_nfc(std::string_view text) {
  utf8proc_uint8_t* result = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                   static_cast<utf8proc_ssize_t>(text.size()), &result,
                   static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> owner(result, &std::free);
  if (n < 0) {
    throw_error(ErrorKind::kFormat, std::string("NFC normalization failed: ") + utf8proc_errmsg(n));
  }
  return std::string(reinterpret_cast<const char*>(result), static_cast<size_t>(n));
}

}  // namespace

// Normalization never reaches across the start of an ASCII character: it is a starter (blocks
// reordering) and the second half of no composition. So ASCII stays as it is, and utf8proc sees
// each non-ASCII run with the ASCII character before it (which marks may compose with).
std::string nfc(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    size_t non_ascii = pos;
    while (non_ascii < text.size() && static_cast<unsigned char>(text[non_ascii]) < 0x80) {
      ++non_ascii;
    }
    if (non_ascii == text.size()) {
      out.append(text.data() + pos, text.size() - pos);
      break;
    }
    const size_t start = non_ascii > pos ? non_ascii - 1 : non_ascii;
    size_t end = non_ascii;
    while (end < text.size() && static_cast<unsigned char>(text[end]) >= 0x80) ++end;
    out.append(text.data() + pos, start - pos);
    out += utf8proc_nfc(text.substr(start, end - start));
    pos = end;
  }
  return out;
}

}  // namespace qtrain
