"""Tokenizes a few strings with the tokenizer of a qtrain tiny model directory three ways:
transformers' AutoTokenizer (reads tokenizer.json + tokenizer_config.json), the `tokenizers`
library on tokenizer.json alone, and the `sentencepiece` package on tokenizer.model.

usage: check_tiny_tokenizer.py MODEL_DIR
prints JSON: {"tokenizer_class": ..., "add_bos_token": ..., "bos_token_id": ..., "eos_token_id": ...,
              "cases": [{"text", "transformers", "transformers_decoded", "tokenizers",
                         "sentencepiece", "sentencepiece_decoded"}, ...]}
"""
import json
import sys

import sentencepiece
import tokenizers
from transformers import AutoTokenizer

TEXTS = [
    "Hello world",
    "The GNU General Public License is a free, copyleft license.",
    " leading space",
    "two  spaces and   three",
    "trailing space ",
    "digits 1234567890 and 3.14",
    "tab\tand\nnewline",
    "héllo wörld ✓ naïve café",
    "日本語のテキスト 🙂 emoji",
    "Ünïcödé ∑ ∫ ≤ ≥ — “quotes”",
    "",
    "a",
    "   ",
]


def main():
    model_dir = sys.argv[1]
    auto = AutoTokenizer.from_pretrained(model_dir)
    raw = tokenizers.Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    sp = sentencepiece.SentencePieceProcessor(model_file=f"{model_dir}/tokenizer.model")
    cases = []
    for text in TEXTS:
        ids = auto(text)["input_ids"]
        sp_ids = sp.encode(text)
        cases.append({
            "text": text,
            "transformers": ids,
            "transformers_decoded": auto.decode(ids, skip_special_tokens=True),
            "tokenizers": raw.encode(text).ids,
            "sentencepiece": sp_ids,
            "sentencepiece_decoded": sp.decode(sp_ids),
        })
    print(json.dumps({
        "tokenizer_class": type(auto).__name__,
        "add_bos_token": getattr(auto, "add_bos_token", None),
        "bos_token_id": auto.bos_token_id,
        "eos_token_id": auto.eos_token_id,
        "unk_token_id": auto.unk_token_id,
        "pad_token_id": auto.pad_token_id,
        "vocab_size": len(auto),
        "cases": cases,
    }, ensure_ascii=False))


if __name__ == "__main__":
    main()
