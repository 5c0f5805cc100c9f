"""Reference-only: make bitsandbytes' 4-bit CPU ops give the same numbers on every x86 machine.

Importing this module (before any Linear4bit is built) routes bitsandbytes' CPU dequantize_4bit
and gemv_4bit to its own pure-PyTorch reference kernels (bitsandbytes.backends.default, the
semantics its CUDA kernels and its test suite share) and turns off Linear4bit's AVX512-BF16
inference path. Why: on CPUs with AVX-512, bitsandbytes 0.50.2's native kernels differ from its
own reference:
  - its AVX-512 dequantize_4bit indexes blocks per row, so a weight whose rows are not a whole
    number of blocks (96 x 80 at blocksize 64) dequantizes to wrong values;
  - Linear4bit in eval mode repacks its weight and multiplies in bfloat16 with a bfloat16
    absmax (errors ~6e-2 on the tiny models), and the repacking fails outright when a row is
    shorter than a block.
Without AVX-512 the native kernels agree with the reference exactly, so the interop tests then
compare against the same values on every machine. qtrain never runs this.
"""
import torch

import bitsandbytes  # noqa: F401  (registers bitsandbytes' own kernels first)
import bitsandbytes.nn.modules as bnb_modules
from bitsandbytes.backends.default import ops as reference_ops
from bitsandbytes.backends.utils import _get_4bit_code


def _dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype):
    codes = A.view(torch.uint8).reshape(-1)
    lookup = _get_4bit_code(quant_type, A.device)
    return reference_ops._dequantize_4bit_compute(codes, absmax, lookup, blocksize, shape, dtype)


def _gemv_4bit(A, B, shapeB, absmax, code, blocksize):
    quant_type = "fp4" if code[1] > 0 else "nf4"
    weight = _dequantize_4bit(B, absmax, blocksize, quant_type, shapeB, A.dtype)
    return torch.nn.functional.linear(A, weight)


# bitsandbytes already holds the CPU dispatch key for these ops and torch refuses a second
# Python kernel there; AutogradCPU is dispatched before CPU, and these ops need no autograd.
_overrides = torch.library.Library("bitsandbytes", "IMPL")
_overrides.impl("dequantize_4bit", _dequantize_4bit, "AutogradCPU")
_overrides.impl("gemv_4bit", _gemv_4bit, "AutogradCPU")
bnb_modules.has_avx512bf16 = lambda: False
