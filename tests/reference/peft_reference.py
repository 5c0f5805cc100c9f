"""Reference-only: PEFT 0.21 on a tiny float32 model, for qtrain's LoRA interop test.

Usage: peft_reference.py BASE_DIR INPUTS.json QTRAIN_ADAPTER_DIR PEFT_ADAPTER_OUT OUT.safetensors
INPUTS.json holds {"input_ids": [[...]], "labels": [[...]]} (labels use -100 to ignore).

(a) Loads the adapter qtrain saved with PeftModel.from_pretrained and writes its logits
    ("logits_a", [B, T, V]) and, in training mode, transformers' causal-LM loss ("loss_a") and
    the gradient of every LoRA tensor ("grad.<PEFT state-dict key>").
(b) Creates a LoRA adapter with peft itself (q_proj, v_proj, down_proj; r=8, lora_alpha=16,
    rsLoRA, random non-zero B), saves it to PEFT_ADAPTER_OUT and writes its logits ("logits_b").
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


def state_dict_key(name):
    # "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight" -> file key
    return name.replace(".default.", ".")


def main():
    base_dir, inputs_path, qtrain_adapter, peft_out, out_path = sys.argv[1:6]
    with open(inputs_path) as f:
        inputs = json.load(f)
    ids = torch.tensor(inputs["input_ids"], dtype=torch.long)
    labels = torch.tensor(inputs["labels"], dtype=torch.long)
    out = {}

    model = PeftModel.from_pretrained(load_base(base_dir), qtrain_adapter, is_trainable=True)
    model.eval()
    with torch.no_grad():
        out["logits_a"] = model(input_ids=ids).logits.float().contiguous()
    model.train()
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    out["loss_a"] = loss.detach().reshape(1)
    for name, param in model.named_parameters():
        if "lora_" in name:
            out["grad." + state_dict_key(name)] = param.grad.detach().contiguous()
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    out["scaling_a"] = torch.tensor([q_proj.scaling["default"]], dtype=torch.float64)

    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                        use_rslora=True, init_lora_weights=False, task_type="CAUSAL_LM")
    model_b = get_peft_model(load_base(base_dir), config)
    model_b.save_pretrained(peft_out)
    model_b.eval()
    with torch.no_grad():
        out["logits_b"] = model_b(input_ids=ids).logits.float().contiguous()
    save_file(out, out_path)


if __name__ == "__main__":
    main()
