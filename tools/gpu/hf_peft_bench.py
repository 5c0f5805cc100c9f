#!/usr/bin/env python3
"""The reference side of tools/gpu/bench_train.sh: the same Llama shape trained by transformers +
peft as their users would, on random weights and random full rows of tokens, LoRA on all linear
layers, sdpa attention, gradient checkpointing. Prints one JSON object: tokens/s, step time, peak
memory, parameter counts for FLOPs, and the measured matmul peak (for MFU).

  --base nf4  (default) QLoRA: the decoder's Linear layers are bitsandbytes Linear4bit (NF4,
              double quant, bf16 compute), prepare_model_for_kbit_training, paged AdamW 32-bit
              (torch AdamW on CPU, which has no paged memory). Needs bitsandbytes importable.
  --base bf16 the dense BF16 base (float32 on CPU) with LoRA and torch AdamW.

  hf_peft_bench.py --shape llama3-8b --seq 2048 --steps 12 [--base bf16] [--config-json c.json]
"""
import argparse
import json
import statistics
import sys
import time

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

SHAPES = {
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                      rope_theta=500000.0, max_position_embeddings=8192, rms_norm_eps=1e-5),
    "llama3-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                       num_attention_heads=64, num_key_value_heads=8, vocab_size=128256,
                       rope_theta=500000.0, max_position_embeddings=8192, rms_norm_eps=1e-5),
}


def matmul_peak_flops(device, dtype):
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 5
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def import_bnb():
    try:
        import bitsandbytes
        return bitsandbytes
    except (ImportError, OSError, RuntimeError) as e:
        print(f"hf_peft_bench: --base nf4 needs bitsandbytes, which cannot be imported ({e}); "
              "put the directory holding its package on PYTHONPATH, or run --base bf16",
              file=sys.stderr)
        sys.exit(3)


def quantize_linears(module, bnb, device, compute_dtype):
    """Replaces every nn.Linear under module by an NF4 double-quant Linear4bit, quantizing its
    current weight on device (as transformers' bnb integration does when loading)."""
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.Linear):
            q = bnb.nn.Linear4bit(child.in_features, child.out_features,
                                  bias=child.bias is not None, compute_dtype=compute_dtype,
                                  compress_statistics=True, quant_type="nf4", device="meta")
            q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4",
                                         compress_statistics=True, module=q).to(device)
            if child.bias is not None:
                q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(module, name, q)
        else:
            quantize_linears(child, bnb, device, compute_dtype)


def build_nf4(config, device, dtype, bnb):
    """The model with an NF4 decoder, built one decoder layer at a time so that an 8B shape never
    holds more than one layer in BF16 next to its quantized copy."""
    layers = config.num_hidden_layers
    config.num_hidden_layers = 0
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
    config.num_hidden_layers = layers
    model.config.num_hidden_layers = layers
    compute_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for i in range(layers):
        with torch.device(device):
            layer = LlamaDecoderLayer(model.config, layer_idx=i).to(dtype)
        layer.apply(model._init_weights)
        quantize_linears(layer, bnb, device, compute_dtype)
        model.model.layers.append(layer)
    model.is_loaded_in_4bit = True  # what from_pretrained(load_in_4bit) sets; peft checks it
    return model


def counts(model):
    """All parameters, and those of the matmuls (every Linear: base, lm_head, LoRA), with
    Linear4bit weights at their logical in x out size rather than their packed storage."""
    matmul, packed = 0, {}
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            matmul += m.in_features * m.out_features + (m.bias.numel() if m.bias is not None else 0)
            if m.weight.__class__.__name__ == "Params4bit":
                packed[id(m.weight)] = m.in_features * m.out_features
    params = sum(packed.get(id(p), p.numel()) for p in model.parameters())
    return params, matmul


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="llama3-8b")
    p.add_argument("--config-json", help="an HF config.json instead of --shape")
    p.add_argument("--base", choices=("nf4", "bf16"), default="nf4")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--r", type=int, default=16)
    args = p.parse_args()
    bnb = import_bnb() if args.base == "nf4" else None

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.config_json:
        config = LlamaConfig.from_json_file(args.config_json)
    else:
        config = LlamaConfig(**SHAPES[args.shape])
    torch.manual_seed(0)
    gc_kwargs = {"use_reentrant": False}
    if bnb:
        model = build_nf4(config, device, dtype, bnb)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                                gradient_checkpointing_kwargs=gc_kwargs)
    else:
        with torch.device(device):
            model = LlamaForCausalLM._from_config(config, dtype=dtype,
                                                  attn_implementation="sdpa")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=0.05,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    params, matmul_params = counts(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if bnb and device.type == "cuda":
        optimizer = bnb.optim.PagedAdamW32bit(trainable, lr=1e-4)
        optimizer_name = "bitsandbytes PagedAdamW32bit"
    else:
        optimizer, optimizer_name = torch.optim.AdamW(trainable, lr=1e-4), "torch AdamW"
        if bnb:
            optimizer_name += " (CPU: no paged memory for bitsandbytes' paged AdamW)"
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(args.warmup + args.steps):
        ids = torch.randint(0, config.vocab_size, (args.micro_batch, args.seq), device=device)
        sync(device)
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    step_seconds = statistics.median(times)
    print(json.dumps({
        "impl": "transformers+bnb+peft qlora" if bnb else "transformers+peft bf16-lora",
        "base": args.base,
        "optimizer": optimizer_name,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "params": params,
        "matmul_params": matmul_params,
        "trainable": sum(p.numel() for p in trainable),
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "seq": args.seq,
        "step_seconds": step_seconds,
        "tokens_per_second": args.micro_batch * args.seq / step_seconds,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
        "matmul_peak_flops": matmul_peak_flops(device, dtype),
        "last_loss": loss.item(),
    }))


if __name__ == "__main__":
    main()
