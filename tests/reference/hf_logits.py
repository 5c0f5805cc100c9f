"""Reference-only: run a Hugging Face model directory with transformers (float32, CPU).

Usage: hf_logits.py INPUTS.json MODEL_DIR...
INPUTS.json holds {"input_ids": [[...], ...], "generate_prompt": [...], "max_new_tokens": N}.
For each MODEL_DIR writes MODEL_DIR/ref_logits.safetensors ("logits", float32 [B, T, V]) with
the logits of a forward pass over input_ids, and MODEL_DIR/ref.json with the greedy
continuation of generate_prompt. One process for all directories: importing transformers is
the slow part. qtrain never runs this; its interop tests compare against it.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM


def main():
    with open(sys.argv[1]) as f:
        inputs = json.load(f)
    for model_dir in sys.argv[2:]:
        run(model_dir, inputs)


def run(model_dir, inputs):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    ids = torch.tensor(inputs["input_ids"], dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float().contiguous()
        prompt = torch.tensor([inputs["generate_prompt"]], dtype=torch.long)
        generated = model.generate(prompt, max_new_tokens=inputs["max_new_tokens"], do_sample=False,
                                   min_new_tokens=inputs["max_new_tokens"], eos_token_id=None,
                                   pad_token_id=0)
    save_file({"logits": logits}, os.path.join(model_dir, "ref_logits.safetensors"))
    with open(os.path.join(model_dir, "ref.json"), "w") as f:
        json.dump({"generated": generated[0, prompt.shape[1]:].tolist(),
                   "model_class": type(model).__name__}, f)


if __name__ == "__main__":
    main()
