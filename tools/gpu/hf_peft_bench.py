#!/usr/bin/env python3
"""The reference side of tools/gpu/bench_train.sh: the same Llama shape trained by transformers +
peft as their users would (BF16 base, LoRA on all linear layers, sdpa attention, gradient
checkpointing, torch AdamW), on random weights and random full rows of tokens. Prints one JSON
object: tokens/s, step time, peak memory, and the measured bf16 matmul peak (for MFU).

  hf_peft_bench.py --shape llama3-8b --seq 2048 --steps 12 [--config-json config.json]
"""
import argparse
import json
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="llama3-8b")
    p.add_argument("--config-json", help="an HF config.json instead of --shape")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--r", type=int, default=16)
    args = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.config_json:
        config = LlamaConfig.from_json_file(args.config_json)
    else:
        config = LlamaConfig(**SHAPES[args.shape])
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, torch_dtype=dtype,
                                              attn_implementation="sdpa")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=0.05,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    params = sum(p.numel() for p in model.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    if device.type == "cuda":
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
    tokens_per_second = args.micro_batch * args.seq / step_seconds
    peak = matmul_peak_flops(device, dtype)
    print(json.dumps({
        "impl": "transformers+peft",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "params": params,
        "trainable": sum(p.numel() for p in trainable),
        "step_seconds": step_seconds,
        "tokens_per_second": tokens_per_second,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
        "matmul_peak_flops": peak,
        "mfu": 6 * params * tokens_per_second / peak,
        "last_loss": loss.item(),
    }))


if __name__ == "__main__":
    main()
