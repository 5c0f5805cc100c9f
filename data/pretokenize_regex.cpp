#include "data/pretokenize_regex.h"

#include "core/error.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cctype>
#include <memory>
#include <string_view>
#include <vector>

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

// A general category (or group of them: L, LC, M, N, P, S, Z, C) as \p{..} names it, and what
// changed in it from Unicode 14 (Debian 12's PCRE2 10.42) to Unicode 16 (tokenizers 0.23's
// Oniguruma): the code points that joined it (most of them unassigned before) and those that
// left it (U+1171E went from Mn to Mc; Cn lost every new character). The pre-tokenizer class
// sweep of tests/data/test_bpe_tokenizer.cpp checks every code point of planes 0-3 and 14
// against tokenizers.
struct CategoryChange {
  const char* name;
  const char* long_name;  // Unicode's, which Oniguruma also takes and PCRE2 10.42 does not
  const char* added;
  const char* removed;
};

// Generated once with Python 3.11 (its unicodedata is Unicode 14.0, as PCRE2 10.42's tables) and
// unicodedata2 16.0.0 (Unicode 16.0): for each entry, the code points whose category is in it
// under 16.0 and not under 14.0 (added), and the reverse (removed), as ranges.
constexpr CategoryChange kCategoryChanges[] = {
    {"L", "Letter",
     R"(\x{1C89}-\x{1C8A}\x{A7CB}-\x{A7CD}\x{A7DA}-\x{A7DC}\x{105C0}-\x{105F3})"
     R"(\x{10D4A}-\x{10D65}\x{10D6F}-\x{10D85}\x{10EC2}-\x{10EC4}\x{1123F}-\x{11240})"
     R"(\x{11380}-\x{11389}\x{1138B}\x{1138E}\x{11390}-\x{113B5}\x{113B7}\x{113D1}\x{113D3})"
     R"(\x{11BC0}-\x{11BE0}\x{11F02}\x{11F04}-\x{11F10}\x{11F12}-\x{11F33}\x{1342F})"
     R"(\x{13441}-\x{13446}\x{13460}-\x{143FA}\x{16100}-\x{1611D}\x{16D40}-\x{16D6C}\x{18CFF})"
     R"(\x{1B132}\x{1B155}\x{1DF25}-\x{1DF2A}\x{1E030}-\x{1E06D}\x{1E4D0}-\x{1E4EB})"
     R"(\x{1E5D0}-\x{1E5ED}\x{1E5F0}\x{2B739}\x{2EBF0}-\x{2EE5D}\x{31350}-\x{323AF})",
     ""},
    {"LC", "Cased_Letter",
     R"(\x{1C89}-\x{1C8A}\x{A7CB}-\x{A7CD}\x{A7DA}-\x{A7DC}\x{10D50}-\x{10D65})"
     R"(\x{10D70}-\x{10D85}\x{1DF25}-\x{1DF2A})",
     ""},
    {"Lu", "Uppercase_Letter", R"(\x{1C89}\x{A7CB}-\x{A7CC}\x{A7DA}\x{A7DC}\x{10D50}-\x{10D65})",
     ""},
    {"Ll", "Lowercase_Letter", R"(\x{1C8A}\x{A7CD}\x{A7DB}\x{10D70}-\x{10D85}\x{1DF25}-\x{1DF2A})",
     ""},
    {"Lt", "Titlecase_Letter", "", ""},
    {"Lm", "Modifier_Letter",
     R"(\x{10D4E}\x{10D6F}\x{16D40}-\x{16D42}\x{16D6B}-\x{16D6C}\x{1E030}-\x{1E06D}\x{1E4EB})", ""},
    {"Lo", "Other_Letter",
     R"(\x{105C0}-\x{105F3}\x{10D4A}-\x{10D4D}\x{10D4F}\x{10EC2}-\x{10EC4}\x{1123F}-\x{11240})"
     R"(\x{11380}-\x{11389}\x{1138B}\x{1138E}\x{11390}-\x{113B5}\x{113B7}\x{113D1}\x{113D3})"
     R"(\x{11BC0}-\x{11BE0}\x{11F02}\x{11F04}-\x{11F10}\x{11F12}-\x{11F33}\x{1342F})"
     R"(\x{13441}-\x{13446}\x{13460}-\x{143FA}\x{16100}-\x{1611D}\x{16D43}-\x{16D6A}\x{18CFF})"
     R"(\x{1B132}\x{1B155}\x{1E4D0}-\x{1E4EA}\x{1E5D0}-\x{1E5ED}\x{1E5F0}\x{2B739})"
     R"(\x{2EBF0}-\x{2EE5D}\x{31350}-\x{323AF})",
     ""},
    {"M", "Mark",
     R"(\x{897}\x{CF3}\x{ECE}\x{10D69}-\x{10D6D}\x{10EFC}-\x{10EFF}\x{11241}\x{113B8}-\x{113C0})"
     R"(\x{113C2}\x{113C5}\x{113C7}-\x{113CA}\x{113CC}-\x{113D0}\x{113D2}\x{113E1}-\x{113E2})"
     R"(\x{11F00}-\x{11F01}\x{11F03}\x{11F34}-\x{11F3A}\x{11F3E}-\x{11F42}\x{11F5A}\x{13440})"
     R"(\x{13447}-\x{13455}\x{1611E}-\x{1612F}\x{1E08F}\x{1E4EC}-\x{1E4EF}\x{1E5EE}-\x{1E5EF})",
     ""},
    {"Mn", "Nonspacing_Mark",
     R"(\x{897}\x{ECE}\x{10D69}-\x{10D6D}\x{10EFC}-\x{10EFF}\x{11241}\x{113BB}-\x{113C0})"
     R"(\x{113CE}\x{113D0}\x{113D2}\x{113E1}-\x{113E2}\x{11F00}-\x{11F01}\x{11F36}-\x{11F3A})"
     R"(\x{11F40}\x{11F42}\x{11F5A}\x{13440}\x{13447}-\x{13455}\x{1611E}-\x{16129})"
     R"(\x{1612D}-\x{1612F}\x{1E08F}\x{1E4EC}-\x{1E4EF}\x{1E5EE}-\x{1E5EF})",
     R"(\x{1171E})"},
    {"Mc", "Spacing_Mark",
     R"(\x{CF3}\x{113B8}-\x{113BA}\x{113C2}\x{113C5}\x{113C7}-\x{113CA}\x{113CC}-\x{113CD})"
     R"(\x{113CF}\x{1171E}\x{11F03}\x{11F34}-\x{11F35}\x{11F3E}-\x{11F3F}\x{11F41})"
     R"(\x{1612A}-\x{1612C})",
     ""},
    {"Me", "Enclosing_Mark", "", ""},
    {"N", "Number",
     R"(\x{10D40}-\x{10D49}\x{116D0}-\x{116E3}\x{11BF0}-\x{11BF9}\x{11F50}-\x{11F59})"
     R"(\x{16130}-\x{16139}\x{16D70}-\x{16D79}\x{1CCF0}-\x{1CCF9}\x{1D2C0}-\x{1D2D3})"
     R"(\x{1E4F0}-\x{1E4F9}\x{1E5F1}-\x{1E5FA})",
     ""},
    {"Nd", "Decimal_Number",
     R"(\x{10D40}-\x{10D49}\x{116D0}-\x{116E3}\x{11BF0}-\x{11BF9}\x{11F50}-\x{11F59})"
     R"(\x{16130}-\x{16139}\x{16D70}-\x{16D79}\x{1CCF0}-\x{1CCF9}\x{1E4F0}-\x{1E4F9})"
     R"(\x{1E5F1}-\x{1E5FA})",
     ""},
    {"Nl", "Letter_Number", "", ""},
    {"No", "Other_Number", R"(\x{1D2C0}-\x{1D2D3})", ""},
    {"P", "Punctuation",
     R"(\x{1B4E}-\x{1B4F}\x{1B7F}\x{10D6E}\x{113D4}-\x{113D5}\x{113D7}-\x{113D8})"
     R"(\x{11B00}-\x{11B09}\x{11BE1}\x{11F43}-\x{11F4F}\x{16D6D}-\x{16D6F}\x{1E5FF})",
     ""},
    {"Pc", "Connector_Punctuation", "", ""},
    {"Pd", "Dash_Punctuation", R"(\x{10D6E})", ""},
    {"Ps", "Open_Punctuation", "", ""},
    {"Pe", "Close_Punctuation", "", ""},
    {"Pi", "Initial_Punctuation", "", ""},
    {"Pf", "Final_Punctuation", "", ""},
    {"Po", "Other_Punctuation",
     R"(\x{1B4E}-\x{1B4F}\x{1B7F}\x{113D4}-\x{113D5}\x{113D7}-\x{113D8}\x{11B00}-\x{11B09})"
     R"(\x{11BE1}\x{11F43}-\x{11F4F}\x{16D6D}-\x{16D6F}\x{1E5FF})",
     ""},
    {"S", "Symbol",
     R"(\x{2427}-\x{2429}\x{2FFC}-\x{2FFF}\x{31E4}-\x{31E5}\x{31EF}\x{10D8E}-\x{10D8F})"
     R"(\x{1CC00}-\x{1CCEF}\x{1CD00}-\x{1CEB3}\x{1F6DC}\x{1F774}-\x{1F776}\x{1F77B}-\x{1F77F})"
     R"(\x{1F7D9}\x{1F8B2}-\x{1F8BB}\x{1F8C0}-\x{1F8C1}\x{1FA75}-\x{1FA77}\x{1FA87}-\x{1FA89})"
     R"(\x{1FA8F}\x{1FAAD}-\x{1FAAF}\x{1FABB}-\x{1FABF}\x{1FAC6}\x{1FACE}-\x{1FACF})"
     R"(\x{1FADA}-\x{1FADC}\x{1FADF}\x{1FAE8}-\x{1FAE9}\x{1FAF7}-\x{1FAF8}\x{1FBCB}-\x{1FBEF})",
     ""},
    {"Sm", "Math_Symbol", R"(\x{10D8E}-\x{10D8F})", ""},
    {"Sc", "Currency_Symbol", "", ""},
    {"Sk", "Modifier_Symbol", "", ""},
    {"So", "Other_Symbol",
     R"(\x{2427}-\x{2429}\x{2FFC}-\x{2FFF}\x{31E4}-\x{31E5}\x{31EF}\x{1CC00}-\x{1CCEF})"
     R"(\x{1CD00}-\x{1CEB3}\x{1F6DC}\x{1F774}-\x{1F776}\x{1F77B}-\x{1F77F}\x{1F7D9})"
     R"(\x{1F8B2}-\x{1F8BB}\x{1F8C0}-\x{1F8C1}\x{1FA75}-\x{1FA77}\x{1FA87}-\x{1FA89}\x{1FA8F})"
     R"(\x{1FAAD}-\x{1FAAF}\x{1FABB}-\x{1FABF}\x{1FAC6}\x{1FACE}-\x{1FACF}\x{1FADA}-\x{1FADC})"
     R"(\x{1FADF}\x{1FAE8}-\x{1FAE9}\x{1FAF7}-\x{1FAF8}\x{1FBCB}-\x{1FBEF})",
     ""},
    {"Z", "Separator", "", ""},
    {"Zs", "Space_Separator", "", ""},
    {"Zl", "Line_Separator", "", ""},
    {"Zp", "Paragraph_Separator", "", ""},
    {"C", "Other", "",
     R"(\x{897}\x{CF3}\x{ECE}\x{1B4E}-\x{1B4F}\x{1B7F}\x{1C89}-\x{1C8A}\x{2427}-\x{2429})"
     R"(\x{2FFC}-\x{2FFF}\x{31E4}-\x{31E5}\x{31EF}\x{A7CB}-\x{A7CD}\x{A7DA}-\x{A7DC})"
     R"(\x{105C0}-\x{105F3}\x{10D40}-\x{10D65}\x{10D69}-\x{10D85}\x{10D8E}-\x{10D8F})"
     R"(\x{10EC2}-\x{10EC4}\x{10EFC}-\x{10EFF}\x{1123F}-\x{11241}\x{11380}-\x{11389}\x{1138B})"
     R"(\x{1138E}\x{11390}-\x{113B5}\x{113B7}-\x{113C0}\x{113C2}\x{113C5}\x{113C7}-\x{113CA})"
     R"(\x{113CC}-\x{113D5}\x{113D7}-\x{113D8}\x{113E1}-\x{113E2}\x{116D0}-\x{116E3})"
     R"(\x{11B00}-\x{11B09}\x{11BC0}-\x{11BE1}\x{11BF0}-\x{11BF9}\x{11F00}-\x{11F10})"
     R"(\x{11F12}-\x{11F3A}\x{11F3E}-\x{11F5A}\x{1342F}\x{13440}-\x{13455}\x{13460}-\x{143FA})"
     R"(\x{16100}-\x{16139}\x{16D40}-\x{16D79}\x{18CFF}\x{1B132}\x{1B155}\x{1CC00}-\x{1CCF9})"
     R"(\x{1CD00}-\x{1CEB3}\x{1D2C0}-\x{1D2D3}\x{1DF25}-\x{1DF2A}\x{1E030}-\x{1E06D}\x{1E08F})"
     R"(\x{1E4D0}-\x{1E4F9}\x{1E5D0}-\x{1E5FA}\x{1E5FF}\x{1F6DC}\x{1F774}-\x{1F776})"
     R"(\x{1F77B}-\x{1F77F}\x{1F7D9}\x{1F8B2}-\x{1F8BB}\x{1F8C0}-\x{1F8C1}\x{1FA75}-\x{1FA77})"
     R"(\x{1FA87}-\x{1FA89}\x{1FA8F}\x{1FAAD}-\x{1FAAF}\x{1FABB}-\x{1FABF}\x{1FAC6})"
     R"(\x{1FACE}-\x{1FACF}\x{1FADA}-\x{1FADC}\x{1FADF}\x{1FAE8}-\x{1FAE9}\x{1FAF7}-\x{1FAF8})"
     R"(\x{1FBCB}-\x{1FBEF}\x{2B739}\x{2EBF0}-\x{2EE5D}\x{31350}-\x{323AF})"},
    {"Cc", "Control", "", ""},
    {"Cf", "Format", R"(\x{13439}-\x{1343F})", ""},
    {"Cs", "Surrogate", "", ""},
    {"Co", "Private_Use", "", ""},
    {"Cn", "Unassigned", "",
     R"(\x{897}\x{CF3}\x{ECE}\x{1B4E}-\x{1B4F}\x{1B7F}\x{1C89}-\x{1C8A}\x{2427}-\x{2429})"
     R"(\x{2FFC}-\x{2FFF}\x{31E4}-\x{31E5}\x{31EF}\x{A7CB}-\x{A7CD}\x{A7DA}-\x{A7DC})"
     R"(\x{105C0}-\x{105F3}\x{10D40}-\x{10D65}\x{10D69}-\x{10D85}\x{10D8E}-\x{10D8F})"
     R"(\x{10EC2}-\x{10EC4}\x{10EFC}-\x{10EFF}\x{1123F}-\x{11241}\x{11380}-\x{11389}\x{1138B})"
     R"(\x{1138E}\x{11390}-\x{113B5}\x{113B7}-\x{113C0}\x{113C2}\x{113C5}\x{113C7}-\x{113CA})"
     R"(\x{113CC}-\x{113D5}\x{113D7}-\x{113D8}\x{113E1}-\x{113E2}\x{116D0}-\x{116E3})"
     R"(\x{11B00}-\x{11B09}\x{11BC0}-\x{11BE1}\x{11BF0}-\x{11BF9}\x{11F00}-\x{11F10})"
     R"(\x{11F12}-\x{11F3A}\x{11F3E}-\x{11F5A}\x{1342F}\x{13439}-\x{13455}\x{13460}-\x{143FA})"
     R"(\x{16100}-\x{16139}\x{16D40}-\x{16D79}\x{18CFF}\x{1B132}\x{1B155}\x{1CC00}-\x{1CCF9})"
     R"(\x{1CD00}-\x{1CEB3}\x{1D2C0}-\x{1D2D3}\x{1DF25}-\x{1DF2A}\x{1E030}-\x{1E06D}\x{1E08F})"
     R"(\x{1E4D0}-\x{1E4F9}\x{1E5D0}-\x{1E5FA}\x{1E5FF}\x{1F6DC}\x{1F774}-\x{1F776})"
     R"(\x{1F77B}-\x{1F77F}\x{1F7D9}\x{1F8B2}-\x{1F8BB}\x{1F8C0}-\x{1F8C1}\x{1FA75}-\x{1FA77})"
     R"(\x{1FA87}-\x{1FA89}\x{1FA8F}\x{1FAAD}-\x{1FAAF}\x{1FABB}-\x{1FABF}\x{1FAC6})"
     R"(\x{1FACE}-\x{1FACF}\x{1FADA}-\x{1FADC}\x{1FADF}\x{1FAE8}-\x{1FAE9}\x{1FAF7}-\x{1FAF8})"
     R"(\x{1FBCB}-\x{1FBEF}\x{2B739}\x{2EBF0}-\x{2EE5D}\x{31350}-\x{323AF})"},
};

// Unicode's loose matching of property names: case, spaces, '_' and '-' do not count.
std::string loose_name(std::string_view name) {
  std::string out;
  for (const char c : name) {
    if (c != ' ' && c != '_' && c != '-') {
      out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
  }
  return out;
}

const CategoryChange* find_category(std::string_view name) {
  const std::string key = loose_name(name);
  for (const CategoryChange& category : kCategoryChanges) {
    if (key == loose_name(category.name) || key == loose_name(category.long_name)) {
      return &category;
    }
  }
  return nullptr;
}

const CategoryChange& decimal_number() {
  static const CategoryChange& nd = *find_category("Nd");
  return nd;
}

// The category's code points as class items: PCRE2's own property plus what joined it since.
std::string category_items(const CategoryChange& category) {
  return std::string("\\p{") + category.name + "}" + category.added;
}

// Whether the category's Unicode 16 members can be class items (a class cannot subtract).
bool fits_in_class(const CategoryChange& category, bool negated) {
  return !negated && !*category.removed;
}

// One code point of the category (or, negated, one outside it), as a pattern of its own.
std::string category_atom(const CategoryChange& category, bool negated) {
  const std::string items = category_items(category);
  if (!*category.removed) return (negated ? "[^" : "[") + items + "]";
  const std::string removed = std::string("[") + category.removed + "]";
  return negated ? "(?:" + removed + "|[^" + items + "])"
                 : "(?:(?!" + removed + ")[" + items + "])";
}

// \p{..} / \P{..} at p[i]: a general category (negated by \P or a leading '^'), another
// property (left to PCRE2), or, without braces, Oniguruma's literal letter (`\pL` is "pL").
struct PropertyEscape {
  size_t length = 2;
  const CategoryChange* category = nullptr;
  bool negated = false;
  bool literal = false;
};

PropertyEscape parse_property(const std::string& p, size_t i) {
  PropertyEscape escape;
  escape.negated = p[i + 1] == 'P';
  if (i + 2 >= p.size() || p[i + 2] != '{') {
    escape.literal = true;
    return escape;
  }
  const size_t close = p.find('}', i + 3);
  if (close == std::string::npos) return escape;  // PCRE2 reports it
  std::string_view name(p.data() + i + 3, close - i - 3);
  if (!name.empty() && name[0] == '^') {
    escape.negated = !escape.negated;
    name.remove_prefix(1);
  }
  escape.category = find_category(name);
  escape.length = close + 1 - i;
  return escape;
}

// A character class being rewritten: items stay inside it; what a class cannot hold (a negated
// category, \S, a category that lost code points) becomes an alternative beside it.
struct ClassParts {
  std::string items;
  std::vector<std::string> atoms;

  void add_category(const CategoryChange& category, bool negated) {
    if (fits_in_class(category, negated)) {
      items += category_items(category);
    } else {
      atoms.push_back(category_atom(category, negated));
    }
  }
};

// The escape at p[i] inside a class, into `parts`; returns where the next item starts.
size_t translate_class_escape(const std::string& p, size_t i, ClassParts* parts) {
  const char e = p[i + 1];
  if (e == 'Q') {  // quoted up to \E
    const size_t end = p.find("\\E", i + 2);
    const size_t stop = end == std::string::npos ? p.size() : end + 2;
    parts->items.append(p, i, stop - i);
    return stop;
  }
  if (e == 's') {
    parts->items += kWhiteSpace;
  } else if (e == 'S') {
    parts->atoms.push_back("[^" + std::string(kWhiteSpace) + "]");
  } else if (e == 'd' || e == 'D') {
    parts->add_category(decimal_number(), e == 'D');
  } else if (e == 'p' || e == 'P') {
    const PropertyEscape escape = parse_property(p, i);
    if (escape.literal) {
      parts->items += e;
    } else if (escape.category) {
      parts->add_category(*escape.category, escape.negated);
    } else {
      parts->items.append(p, i, escape.length);
    }
    return i + escape.length;
  } else {
    parts->items.append(p, i, 2);
  }
  return i + 2;
}

// [items] as is, or, with atoms: (?:[items]|atom...), and negated (?:(?![items]|atom...)(?s:.)).
std::string compose_class(bool negated, const ClassParts& parts) {
  if (parts.atoms.empty()) return (negated ? "[^" : "[") + parts.items + "]";
  std::string alternatives;
  if (!parts.items.empty()) {
    // A '^' first in the items was not first in the class: keep it literal.
    alternatives = "[" + std::string(parts.items[0] == '^' ? "\\" : "") + parts.items + "]";
  }
  for (const std::string& atom : parts.atoms) {
    alternatives += (alternatives.empty() ? "" : "|") + atom;
  }
  return negated ? "(?:(?!" + alternatives + ")(?s:.))" : "(?:" + alternatives + ")";
}

// The class starting at p[*i] ('['), rewritten; *i moves past it. POSIX [:name:] stays inside;
// another '[' is a literal, as in PCRE2.
std::string translate_class(const std::string& p, size_t* i) {
  const size_t open = *i;
  size_t j = open + 1;
  const bool negated = j < p.size() && p[j] == '^';
  if (negated) ++j;
  ClassParts parts;
  if (j < p.size() && p[j] == ']') parts.items += p[j++];  // a literal ] first in the class
  while (j < p.size() && p[j] != ']') {
    if (p[j] == '\\' && j + 1 < p.size()) {
      j = translate_class_escape(p, j, &parts);
    } else if (p[j] == '[' && j + 1 < p.size() && p[j + 1] == ':') {
      const size_t end = p.find(":]", j + 2);
      const size_t stop = end == std::string::npos ? j + 1 : end + 2;
      parts.items.append(p, j, stop - j);
      j = stop;
    } else {
      parts.items += p[j++];
    }
  }
  if (j >= p.size()) {  // unterminated: PCRE2 reports it
    *i = p.size();
    return p.substr(open);
  }
  *i = j + 1;
  return compose_class(negated, parts);
}

// The escape at p[*i] outside a class, rewritten; *i moves past it.
std::string translate_escape(const std::string& p, size_t* i) {
  const size_t at = *i;
  const char e = p[at + 1];
  *i += 2;
  if (e == 'Q') {  // quoted up to \E
    const size_t end = p.find("\\E", at + 2);
    *i = end == std::string::npos ? p.size() : end + 2;
    return p.substr(at, *i - at);
  }
  if (e == 's') return "[" + std::string(kWhiteSpace) + "]";
  if (e == 'S') return "[^" + std::string(kWhiteSpace) + "]";
  if (e == 'd' || e == 'D') return category_atom(decimal_number(), e == 'D');
  if (e == 'p' || e == 'P') {
    const PropertyEscape escape = parse_property(p, at);
    *i = at + escape.length;
    if (escape.literal) return std::string(1, e);
    if (escape.category) return category_atom(*escape.category, escape.negated);
    return p.substr(at, escape.length);
  }
  return p.substr(at, 2);
}

// The pattern with \s, \S, \d, \D and the general categories (\p{L}, \P{Mn}, \p{^N},
// \p{Letter}, ...) spelled out so that PCRE2 matches what Oniguruma does, in and out of classes.
std::string onig_compatible(const std::string& p) {
  std::string out;
  size_t i = 0;
  while (i < p.size()) {
    if (p[i] == '\\' && i + 1 < p.size()) {
      out += translate_escape(p, &i);
    } else if (p[i] == '[') {
      out += translate_class(p, &i);
    } else {
      out += p[i++];
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

namespace {

// Calls on_match(start, end) for each match of `code` in `text`, left to right as Rust's
// find_iter finds them (an empty match right after the previous match is skipped).
template <class OnMatch>
void each_match(const pcre2_code* code, std::string_view text, OnMatch on_match) {
  MatchScratch& s = scratch();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const size_t length = text.size();
  size_t search_from = 0;  // where the next search starts
  bool matched_before = false;
  size_t last_match_end = 0;
  while (search_from <= length) {
    const int rc =
        pcre2_match(code, subject, length, search_from, PCRE2_NO_UTF_CHECK, s.data, s.context);
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
    on_match(start, end);
    search_from = end;
    matched_before = true;
    last_match_end = end;
  }
}

}  // namespace

void SplitRegex::split_isolated(std::string_view text,
                                std::vector<std::string_view>* pieces) const {
  size_t piece_start = 0;  // end of the last piece emitted
  each_match(code_, text, [&](size_t start, size_t end) {
    if (start > piece_start) pieces->push_back(text.substr(piece_start, start - piece_start));
    if (end > start) pieces->push_back(text.substr(start, end - start));
    piece_start = end;
  });
  if (piece_start < text.size()) pieces->push_back(text.substr(piece_start));
}

std::vector<std::pair<size_t, size_t>> SplitRegex::matches(std::string_view text) const {
  std::vector<std::pair<size_t, size_t>> out;
  each_match(code_, text, [&](size_t start, size_t end) { out.emplace_back(start, end); });
  return out;
}

}  // namespace qtrain
