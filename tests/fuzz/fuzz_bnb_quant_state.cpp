// libFuzzer target: the bitsandbytes 4-bit quantization state of one Linear4bit weight. The
// first byte picks the real entries it goes with (NF4 with double quantization, or FP4 without);
// the rest replaces the `quant_state.bitsandbytes__<type>` JSON bytes. An accepted state must
// dequantize to a tensor of the shape it declares.
#include "formats/bnb/quant_state.h"
#include "quant/quantized_tensor.h"
#include "tests/fuzz/fuzz_support.h"

#include <ATen/ATen.h>

#include <cstring>

namespace {

const std::string kModule = "model.layers.0.self_attn.q_proj";

qtrain::NamedTensors real_entries(qtrain::QuantType type, bool nested) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(7);
  const qtrain::QuantizedTensor q =
      qtrain::quantize(at::randn({48, 40}, gen).to(at::kBFloat16), {type, 64, nested});
  return qtrain::to_bnb_entries(kModule, q);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const qtrain::NamedTensors nf4 = real_entries(qtrain::QuantType::kNF4, true);
  static const qtrain::NamedTensors fp4 = real_entries(qtrain::QuantType::kFP4, false);
  qtrain::NamedTensors entries = (data[0] & 1) == 0 ? nf4 : fp4;
  at::Tensor json = at::empty({static_cast<int64_t>(size - 1)}, at::kByte);
  if (size > 1) std::memcpy(json.data_ptr(), data + 1, size - 1);
  entries.back().second = json;  // the quant_state entry is always last
  qtrain::fuzz::expect_success_or_error([&] {
    const qtrain::QuantizedTensor q =
        qtrain::from_bnb_entries(kModule, entries, "model.safetensors");
    const at::Tensor weight = q.dequantize(at::kFloat);
    if (weight.sizes() != at::IntArrayRef(q.shape)) {
      qtrain::fuzz::property_failed("dequantized shape differs from the declared shape");
    }
  });
  return 0;
}
