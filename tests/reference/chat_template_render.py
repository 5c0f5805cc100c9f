"""What transformers' apply_chat_template renders for chat templates, for qtrain's Jinja chat
template tests (tests/data/test_chat_template_jinja.cpp).

usage: chat_template_render.py CASES.json
  CASES.json: {"templates": [{"name", "source", "special_tokens": {"bos_token": ..., ...}}],
               "conversations": [[{"role", "content"}, ...], ...]}
prints {"results": [{"template", "conversation", "text", "prompts", "spans", "error"}, ...]}, one
per template and conversation:
  text     apply_chat_template(conversation, tokenize=False, add_generation_prompt=False) on a
           tokenizer whose special tokens are the template's
  prompts  for each assistant message i: [render(conversation[:i], add_generation_prompt=True),
           render(conversation[:i + 1])]
  spans    the assistant spans as [begin, end] UTF-8 byte offsets: transformers' generation
           indices (return_assistant_tokens_mask) when the template has {% generation %} tags,
           else the rendered-prefix method computed from `prompts` (null when a prefix is not a
           prefix of the whole)
  error    the exception's class and message when transformers refuses (then the rest is null)
"""
import json
import re
import sys

from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import render_jinja_template


def stub_tokenizer(special_tokens):
    vocab = {"[UNK]": 0}
    for text in special_tokens.values():
        vocab.setdefault(text, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    kwargs = {name: text for name, text in special_tokens.items()}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)


def render(tok, source, messages, add_generation_prompt):
    return tok.apply_chat_template(messages, chat_template=source, tokenize=False,
                                   add_generation_prompt=add_generation_prompt)


def one(template, conversation):
    tok = stub_tokenizer(template["special_tokens"])
    source = template["source"]
    out = {"template": template["name"], "conversation": conversation,
           "text": None, "prompts": None, "spans": None, "error": None}
    try:
        text = render(tok, source, conversation, False)
        prompts = []
        for i, message in enumerate(conversation):
            if message["role"] == "assistant":
                prompts.append([render(tok, source, conversation[:i], True),
                                render(tok, source, conversation[: i + 1], False)])
    except Exception as e:  # the template's raise_exception, or a Jinja error
        out["error"] = f"{type(e).__name__}: {e}"
        return out
    out["text"] = text
    out["prompts"] = prompts
    if re.search(r"\{%-?\s*generation\s*-?%\}", source):
        kwargs = dict(tok.special_tokens_map)
        _, indices = render_jinja_template(conversations=[conversation], chat_template=source,
                                           return_assistant_tokens_mask=True, **kwargs)
        spans = [[b, e] for b, e in indices[0] if e > b]
    else:
        spans = []
        for before, through in prompts:
            if not (through.startswith(before) and text.startswith(through)):
                spans = None
                break
            if len(through) > len(before):
                spans.append([len(before), len(through)])
    if spans is not None:
        spans = [[len(text[:b].encode()), len(text[:e].encode())] for b, e in spans]
    out["spans"] = spans
    return out


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        cases = json.load(f)
    results = [one(t, c) for t in cases["templates"] for c in cases["conversations"]]
    json.dump({"results": results}, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
