"""Reference-only: quantize a model directory with transformers + bitsandbytes on CPU and save it.

Usage: bnb_save_4bit.py SRC_DIR OUT_DIR QUANT_TYPE DOUBLE_QUANT
QUANT_TYPE is nf4 or fp4, DOUBLE_QUANT 0 or 1. Loads SRC_DIR in float32 with
BitsAndBytesConfig(load_in_4bit=True, ...) and writes OUT_DIR with save_pretrained: the
pre-quantized `*-bnb-4bit` layout. qtrain never runs this.
"""
import sys

import bnb_reference_kernels  # noqa: F401  (same values on every CPU)
import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig


def main():
    src, out, quant_type, double_quant = sys.argv[1:5]
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                bnb_4bit_use_double_quant=double_quant == "1",
                                bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=config,
                                                 dtype=torch.float32)
    model.save_pretrained(out)


if __name__ == "__main__":
    main()
