// What YAML text may hold, for the recipe reader and writer: YAML 1.2's printable set
// (c-printable), line-break normalisation, and comment-safe text.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace qtrain {

// Far deeper than any recipe (a list in a section nests 3 levels), far shallower than where
// yaml-cpp's recursive parser gives up (500 levels, "bad file") or, in instrumented builds with
// bigger stack frames, overflows the stack.
inline constexpr int kMaxYamlDepth = 64;

// The 1-based line where `text` first nests more than `max_depth` collections, or 0 when it
// never does; a scan ahead of yaml-cpp. It counts generously: each indentation level of a block
// (and each "- " or "? " entry on a line) counts one level, and each [ or { outside quoted
// scalars, comments and block scalars one more.
int64_t line_nested_deeper_than(std::string_view text, int max_depth);

// The first character of valid UTF-8 `text` outside YAML 1.2's printable set (c-printable), as
// "U+XXXX (<place> N)" with N counting characters from 1; empty when there is none.
std::string first_unprintable(std::string_view text, const char* place);

// `text` with CRLF and lone CR turned into LF. YAML reads a lone CR as a line break; yaml-cpp
// keeps it inside a plain scalar instead, then reads it back as a break when a newline follows.
std::string normalize_line_breaks(std::string_view text);

// `text` safe on one comment line: invalid UTF-8 and characters outside the printable set
// (line breaks and TAB included) written as \xNN or \uXXXX.
std::string comment_safe(std::string_view text);

}  // namespace qtrain
