// UTF-8 helpers of the tokenizers: validation, the lossy decoding that byte-level decoders end
// with, white space as Unicode defines it, and NFC (through utf8proc).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace qtrain {

// Whether `text` is well-formed UTF-8 (no overlongs, surrogates or code points past U+10FFFF).
bool is_valid_utf8(std::string_view text);

// `bytes` as UTF-8 with each maximal invalid subpart replaced by U+FFFD: what Rust's
// String::from_utf8_lossy and Python's bytes.decode(errors="replace") give.
std::string utf8_lossy(std::string_view bytes);

// Appends the UTF-8 bytes of code point `c`.
void append_utf8(char32_t c, std::string& out);

// The code point starting at bytes[*pos] of valid UTF-8; advances *pos past it.
char32_t next_code_point(std::string_view text, size_t* pos);
// The code point ending just before bytes[*end] of valid UTF-8; moves *end to its first byte.
char32_t previous_code_point(std::string_view text, size_t* end);

// The Unicode White_Space property (what `\s` matches in Rust's regex and in Oniguruma).
bool is_unicode_white_space(char32_t c);

// Canonical composition (NFC) of valid UTF-8 (utf8proc, Unicode 15). ASCII stays as it is.
std::string nfc(std::string_view text);

}  // namespace qtrain
