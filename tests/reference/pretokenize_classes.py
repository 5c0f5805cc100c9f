"""Which code points Hugging Face tokenizers' regexes (Oniguruma, Unicode 16 in tokenizers 0.23)
match for every Unicode property class a pre-tokenizer pattern may use, for the class sweep of
tests/data/test_bpe_tokenizer.cpp (qtrain compiles the same patterns with PCRE2, whose Unicode
tables are older).

usage: pretokenize_classes.py OUT_JSON

Each pattern matches one code point at a time. Every code point of planes 0-3 and 14 (surrogates
left out) is written in order into one text per plane, the text is split with the pattern
(behavior "removed"), and the code points the split removed are the ones the pattern matched.

OUT_JSON: {"planes": [...], "patterns": [{"pattern", "matched": [[first, last], ...]}]}
"""
import json
import sys
from multiprocessing import Pool

from tokenizers import Regex, pre_tokenizers

PLANES = [0, 1, 2, 3, 14]

# The general categories with the classes pre-tokenizers build from them (o200k / Llama 4 use
# [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}], DeepSeek [\p{L}\p{M}] and [^\r\n\p{L}\p{P}\p{S}]).
FAMILY = ["L", "Lu", "Ll", "Lt", "Lm", "Lo", "M", "Mn", "Mc", "Me", "N", "Nd", "Nl", "No"]
OTHERS = ["LC", "P", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "S", "Sm", "Sc", "Sk", "So", "Z",
          "Zs", "Zl", "Zp", "C", "Cc", "Cf", "Co", "Cn"]
LONG_NAMES = ["Letter", "Cased_Letter", "Uppercase_Letter", "Lowercase_Letter",
              "Titlecase_Letter", "Modifier_Letter", "Other_Letter", "Mark", "Nonspacing_Mark",
              "Spacing_Mark", "Enclosing_Mark", "Number", "Decimal_Number", "Letter_Number",
              "Other_Number", "Punctuation", "Connector_Punctuation", "Dash_Punctuation",
              "Open_Punctuation", "Close_Punctuation", "Initial_Punctuation",
              "Final_Punctuation", "Other_Punctuation", "Symbol", "Math_Symbol",
              "Currency_Symbol", "Modifier_Symbol", "Other_Symbol", "Separator",
              "Space_Separator", "Line_Separator", "Paragraph_Separator", "Other", "Control",
              "Format", "Private_Use", "Unassigned"]
EXTRA = [r"\p{^L}", r"\P{^M}", r"[\p{L}]", r"[^\P{M}]", r"\p{ lu }", r"\p{mark}",
         r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]", r"[^\r\n\p{L}\p{N}]",
         r"[^\s\p{L}\p{N}]", r"[^\r\n\p{L}\p{P}\p{S}]", r"[\p{L}\p{M}]", r"[\P{L}\P{N}]",
         r"[^\p{Mn}\P{M}]", r"\s", r"\S", r"[\S]", r"[^\S]", r"[x\S]", r"\d", r"\D", r"[\d]",
         r"[^\d]", r"[^x\D]", r"[\pL]", r"[\PN]"]


def patterns():
    out = []
    for name in FAMILY:
        out += [f"\\p{{{name}}}", f"\\P{{{name}}}", f"[^\\p{{{name}}}]", f"[x\\P{{{name}}}]",
                f"[^x\\P{{{name}}}]"]
    for name in OTHERS:
        out += [f"\\p{{{name}}}", f"[^x\\P{{{name}}}]"]
    out += [f"\\p{{{name}}}" for name in LONG_NAMES]
    return out + EXTRA


def code_point(plane, index):
    """The index-th code point of a plane's text (plane 0 skips the surrogates)."""
    cp = (plane << 16) + index
    return cp + 0x800 if plane == 0 and cp >= 0xD800 else cp


def add_range(ranges, first, last):
    if ranges and ranges[-1][1] == first - 1:
        ranges[-1][1] = last
    else:
        ranges.append([first, last])


def add_indices(ranges, plane, begin, end):
    """Adds the code points at text indices [begin, end) of a plane."""
    if plane == 0 and begin < 0xD800 < end:
        add_indices(ranges, plane, begin, 0xD800)
        add_indices(ranges, plane, 0xD800, end)
        return
    if begin < end:
        add_range(ranges, code_point(plane, begin), code_point(plane, end - 1))


def matched_ranges(pattern):
    split = pre_tokenizers.Split(Regex(pattern), behavior="removed")
    ranges = []
    for plane in PLANES:
        cps = [cp for cp in range(plane << 16, (plane + 1) << 16) if not 0xD800 <= cp <= 0xDFFF]
        removed_from = 0  # the text between kept pieces is what the pattern matched
        for _, (begin, end) in split.pre_tokenize_str("".join(map(chr, cps))):
            add_indices(ranges, plane, removed_from, begin)
            removed_from = end
        add_indices(ranges, plane, removed_from, len(cps))
    return {"pattern": pattern, "matched": ranges}


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    with Pool(2) as pool:
        results = pool.map(matched_ranges, patterns())
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        json.dump({"planes": PLANES, "patterns": results}, f)


if __name__ == "__main__":
    main()
