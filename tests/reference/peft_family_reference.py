"""Reference-only: PEFT 0.21 on tiny float32 Gemma 2 / Gemma 3 / Phi-3 models, for qtrain's family
interop test.

Usage: peft_family_reference.py INPUTS.json CASES.json
INPUTS.json holds {"input_ids": [[...]], "labels": [[...]]} (labels use -100 to ignore).
CASES.json is a list of {"base", "qtrain_adapter", "peft_out", "out", "targets"}; for each case:
(a) loads the adapter qtrain saved with PeftModel.from_pretrained and writes its logits
    ("logits_a"), in training mode transformers' causal-LM loss ("loss_a") and the gradient of
    every LoRA tensor ("grad.<PEFT state-dict key>"), and the names of the modules PEFT wrapped
    ("wrapped", as a JSON list in OUT.json);
(b) creates a LoRA adapter with peft itself on "targets" (r=8, lora_alpha=16, random non-zero B),
    saves it to peft_out and writes its logits ("logits_b").
One process for everything: importing transformers and peft is the slow part.
"""
import json
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM


def load_base(base_dir):
    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32,
                                                attn_implementation="eager")


def run(case, ids, labels):
    out = {}
    model = PeftModel.from_pretrained(load_base(case["base"]), case["qtrain_adapter"],
                                      is_trainable=True)
    model.eval()
    with torch.no_grad():
        out["logits_a"] = model(input_ids=ids).logits.float().contiguous()
    model.train()
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    out["loss_a"] = loss.detach().reshape(1)
    wrapped = set()
    for name, param in model.named_parameters():
        if "lora_" in name:
            out["grad." + name.replace(".default.", ".")] = param.grad.detach().contiguous()
            wrapped.add(name.split(".lora_")[0].replace("base_model.model.", "", 1))

    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=case["targets"],
                        init_lora_weights=False, task_type="CAUSAL_LM")
    model_b = get_peft_model(load_base(case["base"]), config)
    model_b.save_pretrained(case["peft_out"])
    model_b.eval()
    with torch.no_grad():
        out["logits_b"] = model_b(input_ids=ids).logits.float().contiguous()
    save_file(out, case["out"])
    with open(case["out"] + ".json", "w") as f:
        json.dump({"wrapped": sorted(wrapped)}, f)


def main():
    with open(sys.argv[1]) as f:
        inputs = json.load(f)
    with open(sys.argv[2]) as f:
        cases = json.load(f)
    ids = torch.tensor(inputs["input_ids"], dtype=torch.long)
    labels = torch.tensor(inputs["labels"], dtype=torch.long)
    for case in cases:
        run(case, ids, labels)


if __name__ == "__main__":
    main()
