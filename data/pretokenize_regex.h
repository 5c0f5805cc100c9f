// The regular expressions of Hugging Face pre-tokenizers (Split, ByteLevel's GPT-2 pattern),
// compiled with PCRE2 in UTF + Unicode-property mode, JIT-compiled where PCRE2 has a JIT.
// tokenizers itself uses Oniguruma; PCRE2 is a backtracking engine with the same leftmost-first
// alternation and look-around (Llama 3's `\s+(?!\S)` needs it; RE2 cannot do it). Where the two
// engines differ, the pattern is rewritten before compiling: `\s` / `\S` become the White_Space
// set Oniguruma uses; every general category (`\p{L}`, `\p{Lu}`, `\p{M}`, `\P{N}`, `\p{^Mn}`,
// `\d`, `\p{Letter}`, ..., in and out of classes) gets the members Unicode 15-16 gave it, which
// Debian 12's PCRE2 (Unicode 14) lacks; and `\pL` without braces is the two letters "pL", as in
// Oniguruma.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

struct pcre2_real_code_8;

namespace qtrain {

// GPT-2's pattern: what a ByteLevel pre-tokenizer with use_regex splits on.
extern const char* const kGpt2SplitPattern;

class SplitRegex {
 public:
  // `literal`: match the pattern's text as is (a Split with a "String" pattern). Throws
  // Error(kFormat) with PCRE2's message when the pattern does not compile, and
  // Error(kUnsupported) for Oniguruma escapes PCRE2 reads differently (\h, \H).
  SplitRegex(const std::string& pattern, bool literal);
  SplitRegex(SplitRegex&& other) noexcept;
  SplitRegex& operator=(SplitRegex&& other) noexcept;
  SplitRegex(const SplitRegex&) = delete;
  SplitRegex& operator=(const SplitRegex&) = delete;
  ~SplitRegex();

  // Appends the pieces of `text` (valid UTF-8) as HF's "Isolated" behaviour splits it: each
  // match is a piece, and so is each stretch of text between two matches. Empty pieces are
  // dropped. Matches are found left to right as Rust's find_iter does (an empty match right
  // after the previous match is skipped).
  void split_isolated(std::string_view text, std::vector<std::string_view>* pieces) const;
  // The [begin, end) byte offsets of the matches split_isolated cuts at, in order (for tests).
  std::vector<std::pair<size_t, size_t>> matches(std::string_view text) const;

  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  pcre2_real_code_8* code_ = nullptr;
};

}  // namespace qtrain
