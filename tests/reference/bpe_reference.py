"""Byte-level BPE tokenizer.json files and the ids Hugging Face `tokenizers` gives for them, for
qtrain's BpeTokenizer tests (tests/data/test_bpe_tokenizer.cpp) and tokenizer benchmark.

usage:
  bpe_reference.py train KIND OUT_DIR
      Trains a small byte-level BPE (BpeTrainer, vocab 2000) on the license texts in
      /usr/share/common-licenses plus this file's corpus, with the pipeline of a real model:
        llama3: Split(Llama 3 regex, Isolated) + ByteLevel(use_regex=False), ignore_merges,
                TemplateProcessing adding <|begin_of_text|>, special tokens after the vocabulary;
        qwen2:  NFC, Split(Qwen2 regex) + ByteLevel, no BOS, <|im_start|>-style special tokens,
                a non-special and a normalized added token, merges in the legacy "a b" form;
        gpt2:   ByteLevel(add_prefix_space=True, use_regex=True) alone, lstrip/rstrip added tokens.
      Writes OUT_DIR/tokenizer.json, OUT_DIR/tokenizer_config.json and OUT_DIR/reference.json.
  bpe_reference.py from-gguf KIND GGUF OUT_DIR
      The same files for a real vocabulary: the tokens and merges of a llama.cpp vocab file
      (llama-cpp-python's sdist has vendor/llama.cpp/models/ggml-vocab-llama-bpe.gguf and
      ggml-vocab-qwen2.gguf), KIND llama3 or qwen2 choosing the pipeline above. When GGUF.inp /
      GGUF.out sit beside it, their strings join the corpus and their ids (llama.cpp's record of
      the original tokenizer's) must match, or the script fails.
The corpus: hand-written cases, 300 random mixtures (QTRAIN_BPE_FUZZ_TEXTS sets how many) and four
license texts.

reference.json: {"kind", "vocab_size", "bos_id", "eos_id", "pad_id", "add_bos", "add_eos",
  "cases": [{"text", "ids" (add_special_tokens=False), "ids_special" (=True), "decoded"
             (skip_special_tokens=True), "roundtrip" (expected decode(encode(text)), or null when
             special tokens or a prefix space make it differ)}],
  "sweep": {"templates": [...], "ranges": [[first, last, signature], ...]} (null for qwen2)}
The sweep runs every code point of planes 0-3 and 14 through the pre-tokenizer inside each
template ("{c}" stands for the code point); a signature lists the piece lengths (in bytes; a
prefix space counts) of every template, and code points in a row with the same signature form one
range.
"""
import json
import os
import random
import sys
import unicodedata

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors, trainers

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>", "<|reserved_special_token_0|>"]
QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Added to the llama3 vocabulary after training, so that merges cannot build it: ignore_merges
# makes the pre-token " qtrainword" one token, plain BPE several.
IGNORE_MERGES_WORD = "\u0120qtrainword"

CORPUS = [
    "",
    "Hello world",
    " Hello world",
    "Hello, World!",
    "  leading spaces and trailing spaces  ",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure you'll see they've said it's John's, we'd and we're not.",
    "I'M SURE YOU'LL SEE THEY'VE SAID IT'S JOHN'S, WE'D AND WE'RE NOT.",
    "don't DON'T Don'T 's 'S 'll",
    "qtrainword qtrainword, qtrainwords and xqtrainword",
    "digits 1234567 and 12 and 123 and 1234 and 3.14159 and 1,000,000",
    "phone: +1 (555) 123-4567, year 2024, version 0.23.3",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber Stra\u00dfe \u00e5ngstr\u00f6m",
    "cafe\u0301 nai\u0308ve re\u0301sume\u0301 (decomposed)",
    "\u1e9b\u0323 \u212b \u2126 \u0041\u030a \u00c5 \uac00 \u1100\u1161",
    "\u0301start q\u0307\u0323 a\u0328\u0301 \u1100\u1161\u11a8 \uf900 \U0002FA1D",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3067\u3059\u3002\u6771\u4eac\u3078\u884c\u304d\u307e\u3059",
    "\u4e2d\u6587\u5206\u8bcd\u6d4b\u8bd5\uff1a\u4f60\u597d\uff0c\u4e16\u754c\uff01",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8 \uc785\ub2c8\ub2e4",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645 \u05e9\u05dc\u05d5\u05dd",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
    "emoji \U0001F642\U0001F680 \U0001F44D\U0001F3FD thumbs",
    "family \U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 and flag \U0001F1FA\U0001F1F8",
    "keycap 1\ufe0f\u20e3 heart \u2764\ufe0f rainbow \U0001F3F3\ufe0f\u200d\U0001F308",
    "def f(x):\n\treturn x * 2\n\n\nclass A:\n    def __init__(self):\n        self.y = [1, 2, 3]\n",
    "int main() {\n  for (int i = 0; i < 10; ++i) {\n    printf(\"%d\\n\", i);\n  }\n}\n",
    "if (a && b || !c) { x += y >> 2; } // comment /* block */",
    "windows\r\nline\r\nendings\r\n\r\n",
    "mixed\n\r\n\r\rbreaks\n",
    "tabs\t\tand\t spaces \t mixed",
    "runs of spaces:     five,          ten, end",
    "    ",
    "\n",
    "\n\n\n",
    " \n \n ",
    "\t",
    "trailing newline\n",
    "a",
    "!!!???...,,,;;;",
    "$$$ %%% ^^^ &&& *** ((( )))",
    "email@example.com https://example.com/path?q=1&r=2#frag",
    "\u00a0non-breaking\u00a0spaces\u2003em\u2002en\u3000ideographic",
    "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom",
    "math \u2211 \u222b \u2264 \u2265 \u2260 \u221e \u03c0 \u221a2",
    "quotes \u201cdouble\u201d \u2018single\u2019 \u00abguillemets\u00bb \u2014 dash \u2013 en",
    "full\uff37\uff49\uff44\uff54\uff48 \uff11\uff12\uff13 roman \u2160\u2161\u2162 \u00bd \u00b2",
    "<|begin_of_text|>Hello<|eot_id|>",
    "<|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "text <|eot_id|> spaced <|end_of_text|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n",
    "<|im_start|><|im_end|><|endoftext|>",
    "<tool_call>{\"name\": \"f\"}</tool_call>",
    "unclosed <|im_start and <|eot_id| partial",
    "mask <mask> token   <mask>   and [rstrip]   end",
    "caf\u00e9tok and cafe\u0301tok",
    "\u0000null\u0001ctrl\u001fend\u007fdel",
    "A" * 300,
    "word " * 200,
    "1234567890" * 20,
]


def license_texts():
    root = "/usr/share/common-licenses"
    texts = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if os.path.isfile(path) and not os.path.islink(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                texts.append(f.read())
    return texts


def random_texts(count, seed):
    """Random mixtures of the kinds of text above, to catch what hand-written cases miss."""
    rng = random.Random(seed)
    pieces = ["a", "b", "Z", "the", " the", "The", "'s", "'S", "'ll", "'", "e\u0301", "\u00e9",
              "1", "12", "123", "4567", " ", "  ", "\t", "\n", "\r\n", "\r", " \n", "\u00a0",
              "\u3000", "\u65e5", "\u672c", "\ud55c", "\U0001F642", "\u200d", "\U0001F468",
              "\ufe0f", ".", ",", "!", "?", "(", ")", "{", "}", "-", "_", "/", "\\", "\"", "#",
              "<|eot_id|>", "<|im_end|>", "<|im_start|>", "<tool_call>", "<mask>", "<|", "|>",
              "\u0645", "\u05e9", "\u0928", "\u094d", "\u0e2a", "\u00df", "\u212a", "\u017f",
              "\u2160", "\u00bd", "\uff11", "qtrainword", "A\u030a", "\u0000", "\U00020000",
              "\U000E0001", "\U0010FFFD"]
    def piece():
        if rng.random() < 0.1:  # any code point but a surrogate
            cp = rng.choice([rng.randrange(0x80), rng.randrange(0x800), rng.randrange(0x10000),
                             rng.randrange(0x110000)])
            return chr(cp) if not 0xD800 <= cp <= 0xDFFF else "?"
        return rng.choice(pieces)

    return ["".join(piece() for _ in range(rng.randint(1, 40))) for _ in range(count)]


# One string per code point, which puts it beside letters, digits, spaces, newlines, punctuation
# and contractions.
SWEEP_TEMPLATES = ["a{c}b {c}1{c}{c}\n{c} x{c}'s{c}'S {c}  {c}\r\n1{c}23{c}.{c}\t{c}"]
SWEEP_PLANES = [0, 1, 2, 3, 14]


def sweep(tokenizer):
    pre = tokenizer.pre_tokenizer

    ranges = []
    for plane in SWEEP_PLANES:
        for cp in range(plane << 16, (plane + 1) << 16):
            if 0xD800 <= cp <= 0xDFFF:
                continue
            c = chr(cp)
            signature = []
            for template in SWEEP_TEMPLATES:
                pieces = pre.pre_tokenize_str(template.replace("{c}", c))
                # Byte-level pieces: one character per byte.
                signature.append(",".join(str(len(piece)) for piece, _ in pieces))
            signature = "|".join(signature)
            if ranges and ranges[-1][2] == signature and ranges[-1][1] == cp - 1:
                ranges[-1][1] = cp
            else:
                ranges.append([cp, cp, signature])
    return {"templates": SWEEP_TEMPLATES, "ranges": ranges}


def pipeline(kind, tokenizer):
    """Sets normalizer, pre-tokenizer and decoder as the real models' tokenizer.json have them."""
    if kind == "llama3":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    elif kind == "qwen2":
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    elif kind == "gpt2":
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    else:
        raise SystemExit(f"unknown kind {kind}")
    tokenizer.decoder = decoders.ByteLevel()


def finish(kind, tokenizer):
    """Added tokens, post-processor and model options; returns the tokenizer_config.json dict."""
    if kind == "llama3":
        tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                      for t in LLAMA3_SPECIALS])
        bos = tokenizer.token_to_id("<|begin_of_text|>")
        tokenizer.post_processor = processors.Sequence([
            processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                special_tokens=[("<|begin_of_text|>", bos)])])
        # Llama 3's tokenizer_config.json: no add_bos_token, the template adds BOS.
        return {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                "tokenizer_class": "PreTrainedTokenizerFast"}
    if kind == "qwen2":
        tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                      for t in QWEN2_SPECIALS])
        tokenizer.add_tokens([AddedToken("<tool_call>", special=False, normalized=False),
                              AddedToken("</tool_call>", special=False, normalized=False),
                              AddedToken("caf\u00e9tok", special=False, normalized=True)])
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
        return {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                "add_bos_token": False, "tokenizer_class": "Qwen2Tokenizer"}
    tokenizer.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False),
                                  AddedToken("<mask>", special=True, lstrip=True,
                                             normalized=False)])
    tokenizer.add_tokens([AddedToken("[rstrip]", special=False, rstrip=True, normalized=False)])
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    return {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
            "tokenizer_class": "GPT2Tokenizer"}


def edit_model(kind, tokenizer):
    """Model-level edits through the JSON: ignore_merges and its word (llama3), legacy merges
    (qwen2). Returns the reloaded tokenizer."""
    data = json.loads(tokenizer.to_str())
    model = data["model"]
    if kind == "llama3":
        model["ignore_merges"] = True
        model["vocab"][IGNORE_MERGES_WORD] = len(model["vocab"])
    if kind == "qwen2":
        model["merges"] = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    return Tokenizer.from_str(json.dumps(data, ensure_ascii=False))


def train(kind, out_dir):
    tokenizer = Tokenizer(models.BPE())
    pipeline(kind, tokenizer)
    trainer = trainers.BpeTrainer(vocab_size=2000, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(license_texts() + CORPUS + random_texts(200, 7), trainer)
    tokenizer = edit_model(kind, tokenizer)
    config = finish(kind, tokenizer)
    write(kind, tokenizer, config, out_dir, [])  # no extra texts: a trained tokenizer


def from_gguf(kind, gguf_path, out_dir):
    import gguf  # only this mode needs it
    reader = gguf.GGUFReader(gguf_path)

    def strings(key):
        field = reader.fields[key]
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]

    tokens = strings("tokenizer.ggml.tokens")
    merges = strings("tokenizer.ggml.merges")
    field = reader.fields["tokenizer.ggml.token_type"]
    types = [int(field.parts[i][0]) for i in field.data]
    vocab, added = {}, []
    for i, (token, kind_of) in enumerate(zip(tokens, types)):
        if kind_of in (3, 4):  # control, user-defined: added tokens
            added.append(AddedToken(token, special=kind_of == 3, normalized=False))
        else:
            vocab[token] = i
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges],
                                     ignore_merges=kind == "llama3"))
    pipeline(kind, tokenizer)
    tokenizer.add_special_tokens([t for t in added if t.special])
    tokenizer.add_tokens([t for t in added if not t.special])
    for token in added:
        assert tokenizer.token_to_id(token.content) == tokens.index(token.content), token
    if kind == "llama3":
        bos = tokenizer.token_to_id("<|begin_of_text|>")
        tokenizer.post_processor = processors.Sequence([
            processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
            processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                          special_tokens=[("<|begin_of_text|>", bos)])])
        config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
        config = {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    extra = []
    if os.path.exists(gguf_path + ".inp") and os.path.exists(gguf_path + ".out"):
        with open(gguf_path + ".inp", encoding="utf-8") as f:
            inputs = f.read().split("\n__ggml_vocab_test__\n")
        with open(gguf_path + ".out", encoding="utf-8") as f:
            outputs = f.read().split("\n")
        bad = 0
        for text, line in zip(inputs, outputs):
            expected = [int(x) for x in line.split()]
            if tokenizer.encode(text, add_special_tokens=False).ids != expected:
                bad += 1
        if bad:
            raise SystemExit(f"{bad} of {len(inputs)} llama.cpp reference strings differ")
        extra = inputs
    write(kind, tokenizer, config, out_dir, extra)


def write(kind, tokenizer, config, out_dir, extra_texts):
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)
    # Read back from the file, as any user of it would.
    tokenizer = Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
    added = [t.content for t in tokenizer.get_added_tokens_decoder().values()]
    nfc = kind == "qwen2"
    prefix_space = kind == "gpt2"
    cases = []
    fuzz = int(os.environ.get("QTRAIN_BPE_FUZZ_TEXTS", "300"))
    for text in CORPUS + random_texts(fuzz, 1234) + license_texts()[:4] + extra_texts:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        decoded = tokenizer.decode(ids, skip_special_tokens=True)
        roundtrip = None
        if not prefix_space and not any(a in text for a in added):
            roundtrip = unicodedata.normalize("NFC", text) if nfc else text
            assert decoded == roundtrip, (text, decoded)
        cases.append({"text": text, "ids": ids,
                      "ids_special": tokenizer.encode(text, add_special_tokens=True).ids,
                      "decoded": decoded, "roundtrip": roundtrip})
    if kind == "llama3" and not extra_texts:
        # ignore_merges must matter for the word added after training.
        word_id = tokenizer.token_to_id(IGNORE_MERGES_WORD)
        assert word_id is not None and word_id in cases[CORPUS.index(
            "qtrainword qtrainword, qtrainwords and xqtrainword")]["ids"]
    vocab = tokenizer.get_vocab(with_added_tokens=True)

    def token_id(key):
        value = config.get(key)
        return -1 if value is None else tokenizer.token_to_id(value)

    reference = {
        "kind": kind,
        "vocab_size": max(vocab.values()) + 1,
        "bos_id": token_id("bos_token"),
        "eos_id": token_id("eos_token"),
        "pad_id": token_id("pad_token"),
        "add_bos": kind == "llama3",
        "add_eos": False,
        "cases": cases,
        # Qwen2's pattern differs from Llama 3's only in \p{N} vs \p{N}{1,3}: one sweep does.
        "sweep": None if kind == "qwen2" else sweep(tokenizer),
    }
    with open(os.path.join(out_dir, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(reference, f, ensure_ascii=False)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "train":
        train(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 5 and sys.argv[1] == "from-gguf":
        from_gguf(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
