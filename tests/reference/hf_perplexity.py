"""Reference-only: sliding-window perplexity with transformers, as Hugging Face's perplexity guide
computes it (windows of MAX_LEN tokens every STRIDE tokens; each window scores only the tokens
the previous one did not; a token with no context inside its window is not scored).

Usage: hf_perplexity.py MODEL_DIR IDS.json MAX_LEN STRIDE
IDS.json holds {"ids": [...]}. Prints JSON {"nll_sum", "scored_tokens", "mean_loss", "windows"}.
Sums exact per-token negative log-likelihoods in float64 (the guide's loss * trg_len shortcut is
only approximate).
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM


def main():
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    with open(sys.argv[2]) as f:
        ids = torch.tensor(json.load(f)["ids"], dtype=torch.long)
    max_len, stride = int(sys.argv[3]), int(sys.argv[4])
    n = ids.numel()
    nll, scored, windows, prev_end = 0.0, 0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + max_len, n)
        trg_len = end - prev_end  # tokens this window scores
        window = ids[begin:end].unsqueeze(0)
        with torch.no_grad():
            logp = torch.log_softmax(model(window).logits[0].double(), dim=-1)
        for pos in range(end - trg_len, end):
            if pos == begin:
                continue  # no context inside this window (stride == max_len)
            nll -= logp[pos - begin - 1, ids[pos]].item()
            scored += 1
        windows += 1
        prev_end = end
        if end == n:
            break
    print(json.dumps({"nll_sum": nll, "scored_tokens": scored, "mean_loss": nll / scored,
                      "windows": windows}))


if __name__ == "__main__":
    main()
