// GPT-2's byte-level alphabet: each of the 256 byte values stands for one printable code point,
// so that any byte string becomes a string of "characters" a BPE vocabulary can hold. Printable
// Latin-1 bytes ('!'..'~', 0xA1..0xAC, 0xAE..0xFF) stand for themselves; the other 68 take
// U+0100.. in byte order (space is U+0120 'Ġ', newline U+010A 'Ċ'). Hugging Face's ByteLevel
// pre-tokenizer and decoder use this same table.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace qtrain {

// UTF-8 of the character that stands for each byte.
const std::array<std::string, 256>& byte_level_chars();

// `bytes` written in the byte-level alphabet.
std::string to_byte_level(std::string_view bytes);

// The bytes a byte-level string stands for; false (and `out` unspecified) when `text` holds a
// character outside the alphabet or is not valid UTF-8.
bool from_byte_level(std::string_view text, std::string* out);

}  // namespace qtrain
