#include "data/pretokenize_regex.h"

#include "core/error.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <memory>

namespace qtrain {

const char* const kGpt2SplitPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

namespace {

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(code, buffer, sizeof(buffer));
  return reinterpret_cast<const char*>(buffer);
}

// One match data block, JIT stack and match context per thread, reused by every match.
struct MatchScratch {
  MatchScratch() {
    data = pcre2_match_data_create(8, nullptr);
    context = pcre2_match_context_create(nullptr);
    // Long runs of one class (megabytes of spaces) need more than the default 32 KiB.
    stack = pcre2_jit_stack_create(32 * 1024, 16 * 1024 * 1024, nullptr);
    if (!data || !context || !stack) throw std::bad_alloc();
    pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~MatchScratch() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* stack = nullptr;
};

MatchScratch& scratch() {
  thread_local MatchScratch s;
  return s;
}

// What Oniguruma's \s matches: the White_Space property. PCRE2 10.42's \s also takes U+180E.
constexpr const char* kWhiteSpace =
    R"(\x{9}-\x{D}\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F})"
    R"(\x{205F}\x{3000})";

// Letters (L*) and numbers (N*) assigned in Unicode 15.0 to 16.0. tokenizers 0.23's Oniguruma
// has Unicode 16 tables, Debian 12's PCRE2 10.42 Unicode 14 ones (unassigned there), so \p{L} and
// \p{N} take these along. The pre-tokenizer sweep of tests/data/test_bpe_tokenizer.cpp checks
// every code point of planes 0-3 and 14 against tokenizers.
constexpr const char* kNewLetters =
    R"(\x{1C89}-\x{1C8A}\x{A7CB}-\x{A7CD}\x{A7DA}-\x{A7DC}\x{105C0}-\x{105F3})"
    R"(\x{10D4A}-\x{10D65}\x{10D6F}-\x{10D85}\x{10EC2}-\x{10EC4}\x{1123F}-\x{11240})"
    R"(\x{11380}-\x{11389}\x{1138B}\x{1138E}\x{11390}-\x{113B5}\x{113B7}\x{113D1}\x{113D3})"
    R"(\x{11BC0}-\x{11BE0}\x{11F02}\x{11F04}-\x{11F10}\x{11F12}-\x{11F33}\x{1342F})"
    R"(\x{13441}-\x{13446}\x{13460}-\x{143FA}\x{16100}-\x{1611D}\x{16D40}-\x{16D6C})"
    R"(\x{18CFF}\x{1B132}\x{1B155}\x{1DF25}-\x{1DF2A}\x{1E030}-\x{1E06D}\x{1E4D0}-\x{1E4EB})"
    R"(\x{1E5D0}-\x{1E5ED}\x{1E5F0}\x{2B739}\x{2EBF0}-\x{2EE5D}\x{31350}-\x{323AF})";
constexpr const char* kNewNumbers =
    R"(\x{10D40}-\x{10D49}\x{116D0}-\x{116E3}\x{11BF0}-\x{11BF9}\x{11F50}-\x{11F59})"
    R"(\x{16130}-\x{16139}\x{16D70}-\x{16D79}\x{1CCF0}-\x{1CCF9}\x{1D2C0}-\x{1D2D3})"
    R"(\x{1E4F0}-\x{1E4F9}\x{1E5F1}-\x{1E5FA})";

// The pattern with \s, \S, \p{L}, \p{N} (and \P{L}, \P{N}, \pL, \pN) spelled out so that PCRE2
// matches what Oniguruma does. Inside a character class only the positive forms can be widened;
// \S and \P{..} stay as they are there.
std::string onig_compatible(const std::string& p) {
  std::string out;
  bool in_class = false;
  size_t i = 0;
  auto copy = [&](size_t n) {
    out.append(p, i, n);
    i += n;
  };
  while (i < p.size()) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[i + 1];
      if (e == 'Q') {  // quoted up to \E
        const size_t end = p.find("\\E", i + 2);
        copy(end == std::string::npos ? p.size() - i : end + 2 - i);
      } else if (e == 's') {
        out += in_class ? std::string(kWhiteSpace) : "[" + std::string(kWhiteSpace) + "]";
        i += 2;
      } else if (e == 'S' && !in_class) {
        out += "[^" + std::string(kWhiteSpace) + "]";
        i += 2;
      } else if (e == 'p' || e == 'P') {
        size_t length = 3;
        std::string name = p.substr(i + 2, 1);
        if (name == "{") {
          const size_t close = p.find('}', i + 3);
          if (close == std::string::npos) {
            copy(2);  // let PCRE2 report it
            continue;
          }
          name = p.substr(i + 3, close - i - 3);
          length = close + 1 - i;
        }
        const char* extra = name == "L" ? kNewLetters : name == "N" ? kNewNumbers : nullptr;
        if (extra && (e == 'p' || !in_class)) {
          const std::string body = "\\p{" + name + "}" + extra;
          out += in_class ? body : (e == 'p' ? "[" : "[^") + body + "]";
          i += length;
        } else {
          copy(length);
        }
      } else {
        copy(2);
      }
    } else if (!in_class && c == '[') {
      in_class = true;
      copy(1);
      if (i < p.size() && p[i] == '^') copy(1);
      if (i < p.size() && p[i] == ']') copy(1);  // a literal ] first in the class
    } else if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {
      const size_t end = p.find(":]", i + 2);  // a POSIX class
      copy(end == std::string::npos ? 1 : end + 2 - i);
    } else {
      if (in_class && c == ']') in_class = false;
      copy(1);
    }
  }
  return out;
}

// Oniguruma reads \h as a hex digit, PCRE2 as horizontal space.
bool has_onig_only_escape(const std::string& pattern) {
  for (size_t i = 0; i + 1 < pattern.size(); ++i) {
    if (pattern[i] != '\\') continue;
    if (pattern[i + 1] == 'h' || pattern[i + 1] == 'H') return true;
    ++i;  // skip the escaped character, so "\\h" is a backslash and an 'h'
  }
  return false;
}

}  // namespace

SplitRegex::SplitRegex(const std::string& pattern, bool literal) : pattern_(pattern) {
  if (!literal && has_onig_only_escape(pattern)) {
    throw_error(ErrorKind::kUnsupported,
                "pre-tokenizer pattern uses \\h or \\H, which Oniguruma and PCRE2 read "
                "differently: " +
                    pattern);
  }
  const uint32_t options = literal ? (PCRE2_UTF | PCRE2_LITERAL) : (PCRE2_UTF | PCRE2_UCP);
  const std::string compiled = literal ? pattern : onig_compatible(pattern);
  int error = 0;
  PCRE2_SIZE offset = 0;
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(compiled.data()), compiled.size(), options,
                        &error, &offset, nullptr);
  if (!code_) {
    throw_error(ErrorKind::kFormat,
                "pre-tokenizer pattern does not compile: " + pcre2_message(error) + ": " + pattern);
  }
  uint32_t have_jit = 0;
  pcre2_config(PCRE2_CONFIG_JIT, &have_jit);
  if (have_jit) pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // the interpreter if it fails
}

SplitRegex::SplitRegex(SplitRegex&& other) noexcept
    : pattern_(std::move(other.pattern_)), code_(other.code_) {
  other.code_ = nullptr;
}

SplitRegex& SplitRegex::operator=(SplitRegex&& other) noexcept {
  if (this != &other) {
    pcre2_code_free(code_);
    pattern_ = std::move(other.pattern_);
    code_ = other.code_;
    other.code_ = nullptr;
  }
  return *this;
}

SplitRegex::~SplitRegex() {
  pcre2_code_free(code_);
}

void SplitRegex::split_isolated(std::string_view text,
                                std::vector<std::string_view>* pieces) const {
  MatchScratch& s = scratch();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const size_t length = text.size();
  size_t piece_start = 0;  // end of the last piece emitted
  size_t search_from = 0;  // where the next search starts
  bool matched_before = false;
  size_t last_match_end = 0;
  while (search_from <= length) {
    const int rc =
        pcre2_match(code_, subject, length, search_from, PCRE2_NO_UTF_CHECK, s.data, s.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      throw_error(ErrorKind::kUnsupported,
                  "pre-tokenizer pattern failed on the text: " + pcre2_message(rc));
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(s.data);
    const size_t start = ovector[0];
    const size_t end = ovector[1];
    if (start == end && matched_before && end == last_match_end) {
      // An empty match where the previous one ended: step over one character and retry.
      if (search_from >= length) break;
      ++search_from;
      while (search_from < length && (static_cast<unsigned char>(text[search_from]) & 0xC0) == 0x80)
        ++search_from;
      continue;
    }
    if (start > piece_start) pieces->push_back(text.substr(piece_start, start - piece_start));
    if (end > start) pieces->push_back(text.substr(start, end - start));
    piece_start = end;
    search_from = end;
    matched_before = true;
    last_match_end = end;
  }
  if (piece_start < length) pieces->push_back(text.substr(piece_start));
}

}  // namespace qtrain
