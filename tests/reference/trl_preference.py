"""TRL's DPO or ORPO on one batch: loss, metrics and LoRA gradients, for qtrain to match.

usage: trl_preference.py MODEL_DIR ADAPTER_DIR PAIRS_JSONL OBJECTIVE BETA LABEL_SMOOTHING

The adapter (qtrain's PEFT files) is loaded into the LoRA that TRL itself wraps around the base
(so TRL's reference is the base with the adapters off); every pair goes into one batch. Prints
JSON: loss, metrics, grads {qtrain name: flat list}, and the token ids TRL trained on.
"""
import json
import sys
import warnings

warnings.filterwarnings("ignore")

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()

model_dir, adapter_dir, pairs_path, objective, beta, smoothing = sys.argv[1:7]
beta, smoothing = float(beta), float(smoothing)
pairs = [json.loads(line) for line in open(pairs_path) if line.strip()]
config = json.load(open(f"{adapter_dir}/adapter_config.json"))
tokenizer = AutoTokenizer.from_pretrained(model_dir)
if tokenizer.pad_token is None:
    tokenizer.pad_token = tokenizer.eos_token
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
peft_config = LoraConfig(r=config["r"], lora_alpha=config["lora_alpha"],
                         target_modules=config["target_modules"], lora_dropout=0.0,
                         task_type="CAUSAL_LM")
common = dict(output_dir="/tmp/trl-ref-unused", per_device_train_batch_size=len(pairs),
              report_to=[], use_cpu=True, gradient_checkpointing=False, beta=beta,
              remove_unused_columns=False, dataloader_drop_last=False)
data = Dataset.from_list(pairs)
if objective == "dpo":
    from trl import DPOConfig, DPOTrainer
    args = DPOConfig(**common, label_smoothing=smoothing, max_length=None,
                     loss_type=["robust" if smoothing > 0 else "sigmoid"])
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=peft_config)
else:
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    args = ORPOConfig(**common, max_length=512, padding_value=tokenizer.pad_token_id)
    trainer = ORPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                          peft_config=peft_config)
peft_model = trainer.model
# qtrain's adapter into TRL's LoRA ("default" adapter).
weights = load_file(f"{adapter_dir}/adapter_model.safetensors")
set_peft_model_state_dict(peft_model, weights)
loaded = get_peft_model_state_dict(peft_model)
assert all(torch.equal(loaded[k], weights[k]) for k in weights), "adapter did not load"
peft_model.train()
batch = next(iter(trainer.get_train_dataloader()))
if objective == "dpo":
    loss = trainer.compute_loss(peft_model, batch)
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    ids = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
else:
    loss, metrics = trainer.get_batch_loss_metrics(peft_model, batch)
    ids = [row[row != -1].tolist() for row in []]
    half = len(pairs)
    for key in ("chosen", "rejected"):
        for row, mask in zip(batch[f"{key}_input_ids"], batch[f"{key}_attention_mask"]):
            ids.append(row[mask.bool()].tolist())
loss.backward()
grads = {}
for name, param in peft_model.named_parameters():
    if param.grad is None or "lora_" not in name:
        continue
    key = name.replace("base_model.model.", "", 1).replace(".default", "")
    grads[key] = param.grad.flatten().tolist()
print(json.dumps({"loss": loss.item(), "metrics": metrics, "grads": grads, "ids": ids}))
