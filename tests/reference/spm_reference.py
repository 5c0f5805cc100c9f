"""Hugging Face's ids for a real SentencePiece model (tests/data/test_sentencepiece_real.cpp).

usage: spm_reference.py MODEL CASES OUT

MODEL is a Llama-style tokenizer.model (Mistral 7B v0.1's, from scripts/fetch_vocabs.sh); CASES a
JSON file {"corpus": [text, ...], "chats": [[{role, content}, ...], ...]}. Writes OUT:

  corpus: [{text, ids, ids_split, decoded, spm_ids, spm_decoded}]
    ids        tokenizer.encode(text, add_special_tokens=False): "<s>" / "</s>" in the text are
               the special ids, as transformers always parses them
    ids_split  the same with split_special_tokens=True: the text taken literally
    decoded    tokenizer.decode(ids_split, skip_special_tokens=True)
    spm_ids    the sentencepiece library's own ids, spm_decoded its decode(spm_ids)
  chats: [{messages, text, ids, spm_ids}]  apply_chat_template with Mistral v0.1's template;
    spm_ids: the rendered text cut at "<s>" / "</s>" (ids 1 / 2), each piece encoded by the
    sentencepiece library (what transformers 4's slow legacy LlamaTokenizer did)

transformers' tokenizers-backed conversion of a .model is not sentencepiece itself: its Metaspace
pre-tokenizer drops one leading space (" x" gives "▁x"), and without sentencepiece's split at
whitespace its BPE merges runs of spaces differently ("a  b": "▁a" "▁▁" "b" against sentencepiece's
"▁a" "▁" "▁b"). The test compares qtrain with both.

The tokenizer is transformers 5's LlamaTokenizer (tokenizers backend) converted from the .model
by from_pretrained, with legacy=True (Mistral v0.1's tokenizer: every text segment, also one
after a special token, gets the "▁" prefix) and no BOS / EOS added by encode.
"""

import json
import os
import re
import shutil
import sys
import tempfile

MISTRAL_V1_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}"
    "{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)


def main():
    model, cases_path, out_path = sys.argv[1:4]
    import sentencepiece
    from transformers import LlamaTokenizer

    with open(cases_path, encoding="utf-8") as f:
        cases = json.load(f)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(model, os.path.join(tmp, "tokenizer.model"))
        tok = LlamaTokenizer.from_pretrained(
            tmp, legacy=True, add_bos_token=False, add_eos_token=False
        )
    tok.chat_template = MISTRAL_V1_TEMPLATE
    sp = sentencepiece.SentencePieceProcessor(model_file=model)
    assert len(tok) == 32000 and tok.bos_token_id == 1 and tok.eos_token_id == 2, len(tok)

    corpus = []
    for text in cases["corpus"]:
        ids_split = tok.encode(text, add_special_tokens=False, split_special_tokens=True)
        corpus.append(
            {
                "text": text,
                "ids": tok.encode(text, add_special_tokens=False),
                "ids_split": ids_split,
                "decoded": tok.decode(ids_split, skip_special_tokens=True),
                "spm_ids": sp.encode(text),
                "spm_decoded": sp.decode(sp.encode(text)),
            }
        )
    chats = []
    for messages in cases["chats"]:
        text = tok.apply_chat_template(messages, tokenize=False)
        ids = tok.apply_chat_template(messages, tokenize=True)
        if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        assert ids == tok.encode(text, add_special_tokens=False), "template ids"
        spm_ids = []
        for i, part in enumerate(re.split(r"(<s>|</s>)", text)):
            if i % 2:
                spm_ids.append(1 if part == "<s>" else 2)
            elif part:
                spm_ids += sp.encode(part)
        chats.append({"messages": messages, "text": text, "ids": ids, "spm_ids": spm_ids})
    result = {
        "vocab_size": len(tok),
        "pieces": tok.convert_ids_to_tokens(list(range(len(tok)))),
        "corpus": corpus,
        "chats": chats,
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
