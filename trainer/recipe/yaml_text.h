// What YAML text may hold, for the recipe reader and writer: YAML 1.2's printable set
// (c-printable), line-break normalisation, and comment-safe text.
#pragma once

#include <string>
#include <string_view>

namespace qtrain {

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
