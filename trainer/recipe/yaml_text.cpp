#include "trainer/recipe/yaml_text.h"

#include "data/unicode_text.h"

#include <algorithm>
#include <cstdio>
#include <vector>

namespace qtrain {
namespace {

// YAML 1.2's c-printable set: TAB, LF, CR, and everything printable from U+0020 on except DEL,
// the C1 controls other than NEL, and U+FFFE/U+FFFF.
bool is_yaml_printable(char32_t c) {
  if (c < 0x20) return c == '\t' || c == '\n' || c == '\r';
  if (c >= 0x7F && c <= 0x9F) return c == 0x85;
  return c != 0xFFFE && c != 0xFFFF;
}

bool is_blank(char c) {
  return c == ' ' || c == '\t';
}

// Follows YAML's structure line by line, as far as nesting depth goes: the open block
// collections (by indentation column), the open flow collections, and what carries over from one
// line to the next (a quoted scalar, a block scalar).
class NestingScan {
 public:
  explicit NestingScan(int max_depth) : max_depth_(max_depth) {}

  // False when `line` takes the nesting beyond the limit.
  bool line_within_limit(std::string_view line) {
    const size_t indent = line.find_first_not_of(' ') == std::string_view::npos
                              ? line.size()
                              : line.find_first_not_of(' ');
    if (block_scalar_indent_ >= 0) {
      if (indent == line.size() || static_cast<int64_t>(indent) > block_scalar_indent_) return true;
      block_scalar_indent_ = -1;
    }
    size_t pos = 0;
    if (quote_ != 0) {
      pos = skip_quoted(line, 0);
      if (quote_ != 0) return true;
      return scan_tokens(line, pos + 1, indent, false);
    }
    if (indent == line.size() || line[indent] == '#') return true;  // blank or a comment
    pos = indent;
    if (flow_depth_ == 0) {
      pos = open_block_levels(line, indent);
      if (depth() > max_depth_) return false;
    }
    return scan_tokens(line, pos, indent, true);
  }

 private:
  int depth() const { return static_cast<int>(block_columns_.size()) + flow_depth_; }

  // A block line at `indent` closes the block collections indented as far or further, and
  // opens one at its column plus one per "- " / "? " entry indicator that follows.
  size_t open_block_levels(std::string_view line, size_t indent) {
    while (!block_columns_.empty() && block_columns_.back() >= indent) block_columns_.pop_back();
    block_columns_.push_back(indent);
    size_t pos = indent;
    while (pos < line.size() && (line[pos] == '-' || line[pos] == '?') &&
           (pos + 1 == line.size() || is_blank(line[pos + 1]))) {
      ++pos;
      while (pos < line.size() && is_blank(line[pos])) ++pos;
      if (pos == line.size() || line[pos] == '#') break;
      block_columns_.push_back(pos);
    }
    return pos;
  }

  // From `pos`, the index of the quote that closes the open quoted scalar (quote_ then 0), or
  // the line's size when it goes on past the line.
  size_t skip_quoted(std::string_view line, size_t pos) {
    for (; pos < line.size(); ++pos) {
      if (quote_ == '"' && line[pos] == '\\') {
        ++pos;
      } else if (line[pos] == quote_) {
        if (quote_ == '\'' && pos + 1 < line.size() && line[pos + 1] == '\'') {
          ++pos;  // '' is a quote inside a single-quoted scalar
          continue;
        }
        quote_ = 0;
        return pos;
      }
    }
    return line.size();
  }

  // The rest of a line from `pos`; `token_start` says whether a new node may begin there (only
  // there do a quote, a bracket or a block scalar indicator have their YAML meaning).
  bool scan_tokens(std::string_view line, size_t pos, size_t indent, bool token_start) {
    for (; pos < line.size(); ++pos) {
      const char c = line[pos];
      if (is_blank(c)) continue;
      if (c == '#' && (pos == 0 || is_blank(line[pos - 1]))) return true;  // a comment
      if (token_start && (c == '"' || c == '\'')) {
        quote_ = c;
        pos = skip_quoted(line, pos + 1);
        if (quote_ != 0) return true;  // goes on on the next line
        token_start = false;
      } else if ((c == '[' || c == '{') && (token_start || flow_depth_ > 0)) {
        ++flow_depth_;
        if (depth() > max_depth_) return false;
        token_start = true;
      } else if ((c == ']' || c == '}') && flow_depth_ > 0) {
        --flow_depth_;
        token_start = false;
      } else if ((c == ',' && flow_depth_ > 0) ||
                 (c == ':' &&
                  (flow_depth_ > 0 || pos + 1 == line.size() || is_blank(line[pos + 1])))) {
        token_start = true;
      } else if (token_start && flow_depth_ == 0 && (c == '|' || c == '>')) {
        block_scalar_indent_ = static_cast<int64_t>(indent);
        return true;
      } else if (token_start && (c == '&' || c == '!')) {
        while (pos + 1 < line.size() && !is_blank(line[pos + 1])) ++pos;  // anchor or tag
      } else {
        token_start = false;
      }
    }
    return true;
  }

  int max_depth_;
  std::vector<size_t> block_columns_;
  int flow_depth_ = 0;
  char quote_ = 0;
  int64_t block_scalar_indent_ = -1;
};

}  // namespace

int64_t line_nested_deeper_than(std::string_view text, int max_depth) {
  NestingScan scan(max_depth);
  int64_t line = 1;
  for (size_t begin = 0; begin <= text.size(); ++line) {
    const size_t end = std::min(text.find('\n', begin), text.size());
    if (!scan.line_within_limit(text.substr(begin, end - begin))) return line;
    begin = end + 1;
  }
  return 0;
}

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
