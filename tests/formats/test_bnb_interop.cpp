// qtrain's NF4/FP4 quantization against bitsandbytes 0.50 on CPU (tests/reference/bnb_quantize.py):
// codes, absmax, nested absmax, offset, code tables, the quant_state JSON bytes and the entry
// layout, for BF16 and FP32 tensors with odd sizes and partial blocks, blocksizes 64 and 128,
// with and without double quantization. Codes may differ only inside the zones where bnb's CPU
// path departs from its CUDA kernels (tests/quant/bnb_cpu_divergence.h); everything else is
// exact. Also the bit-exact round trip QuantizedTensor -> bnb entries -> QuantizedTensor.
#include "formats/bnb/quant_state.h"
#include "formats/safetensors/safetensors.h"
#include "quant/quantized_tensor.h"
#include "tests/quant/bnb_cpu_divergence.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cstring>
#include <iostream>
#include <map>

namespace qtrain {
namespace {

namespace t = qtrain::testing;

// Gaussian values with a scale that changes from row to row, so that absmax (and the nested
// codes) spread out. No block is all zeros.
at::Tensor random_weight(std::vector<int64_t> shape, at::ScalarType dtype, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  at::Tensor x = at::randn(shape, gen, at::kFloat);
  const int64_t rows = shape.size() == 2 ? shape[0] : 1;
  at::Tensor scale = at::exp(at::randn({rows, 1}, gen, at::kFloat));
  return (x.view({rows, -1}) * scale).view(shape).to(dtype);
}

NamedTensors interop_inputs() {
  return {
      {"bf16_rows", random_weight({96, 80}, at::kBFloat16, 1)},   // whole blocks
      {"bf16_odd", random_weight({33, 17}, at::kBFloat16, 2)},    // odd n, partial blocks
      {"bf16_big", random_weight({512, 136}, at::kBFloat16, 3)},  // 5 nested blocks at 64
      {"f32_wide", random_weight({5, 301}, at::kFloat, 4)},       // odd rows and n
      {"f32_many", random_weight({300, 200}, at::kFloat, 5)},     // partial nested block
      {"f32_vec", random_weight({999}, at::kFloat, 6)},           // 1-D
  };
}

uint32_t bits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof(b));
  return b;
}

std::string bytes_to_string(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return std::string(reinterpret_cast<const char*>(c.data_ptr<uint8_t>()), c.numel());
}

void expect_same_bits(const at::Tensor& a, const at::Tensor& b, const std::string& what) {
  ASSERT_TRUE(a.defined() && b.defined()) << what;
  ASSERT_EQ(a.scalar_type(), b.scalar_type()) << what;
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  const at::Tensor ac = a.contiguous().cpu(), bc = b.contiguous().cpu();
  EXPECT_EQ(std::memcmp(ac.data_ptr(), bc.data_ptr(), ac.numel() * ac.element_size()), 0) << what;
}

TEST(BnbInteropTest, QuantizeMatchesBitsandbytesOnCpu) {
  QTRAIN_REQUIRE_REFERENCE_PYTHON();
  t::ScratchDir dir("bnb-interop");
  const NamedTensors inputs = interop_inputs();
  write_safetensors(dir.file("in.safetensors"), inputs);
  std::string log;
  ASSERT_EQ(t::run_reference_script(
                "bnb_quantize.py", {dir.file("in.safetensors"), dir.file("out.safetensors")}, &log),
            0)
      << log;
  const std::string ref_path = dir.file("out.safetensors");
  const CheckpointReader ref = CheckpointReader::open_file(ref_path);
  const TensorLookup lookup = [&](const std::string& name) {
    return ref.contains(name) ? ref.tensor(name) : at::Tensor();
  };

  std::map<std::string, t::Divergences> by_case;
  int64_t codes_compared = 0;
  for (const auto& [name, x] : inputs) {
    for (QuantType type : {QuantType::kNF4, QuantType::kFP4}) {
      for (int64_t blocksize : {64, 128}) {
        const QuantizedTensor plain = quantize(x, {type, blocksize, false});
        for (bool nested : {false, true}) {
          const std::string module = name + "." + quant_type_name(type) + "." +
                                     std::to_string(blocksize) + (nested ? ".nested" : ".plain");
          SCOPED_TRACE(module);
          const QuantizedTensor ours = nested ? quantize(x, {type, blocksize, true}) : plain;
          const QuantizedTensor bnb = from_bnb_entries(module, lookup, ref_path);
          EXPECT_EQ(bnb.shape, ours.shape);
          EXPECT_EQ(bnb.dtype, ours.dtype);
          EXPECT_EQ(bnb.blocksize, ours.blocksize);
          expect_same_bits(bnb.code, ours.code, "quant_map");

          // Same entry names, dtypes and shapes as bnb's state dict.
          const NamedTensors entries = to_bnb_entries(module, ours);
          for (const auto& [entry, tensor] : entries) {
            ASSERT_TRUE(ref.contains(entry)) << entry;
            EXPECT_EQ(ref.info(entry).scalar_type, tensor.scalar_type()) << entry;
            if (entry.find("quant_state") == std::string::npos) {
              EXPECT_EQ(ref.info(entry).shape, tensor.sizes().vec()) << entry;
            }
          }
          // The JSON bytes, nested_offset digits included.
          const std::string state_name =
              module + ".weight.quant_state.bitsandbytes__" + quant_type_name(type);
          EXPECT_EQ(bnb_quant_state_json(ours), bytes_to_string(ref.tensor(state_name)));

          if (nested) {
            EXPECT_EQ(bits(ours.nested->offset), bits(bnb.nested->offset));
            EXPECT_EQ(bits(ours.nested->offset),
                      bits(ref.tensor(module + ".offset")[0].item<float>()));
            expect_same_bits(ours.nested->absmax, bnb.nested->absmax, "nested_absmax");
            expect_same_bits(ours.nested->code, bnb.nested->code, "nested_quant_map");
            by_case[module] = t::compare_nested_codes(
                plain.absmax, ours.nested->offset, ours.nested->absmax, ours.nested->blocksize,
                ours.nested->codes, bnb.nested->codes, module);
          } else {
            expect_same_bits(ours.absmax, bnb.absmax, "absmax");
            by_case[module] =
                t::compare_4bit_codes(x, type, blocksize, ours.absmax, ours.data, bnb.data, module);
            codes_compared += x.numel();
            if (x.numel() % 2 == 1) {  // the padding nibble
              EXPECT_EQ(ours.data.view(-1)[-1].item<uint8_t>() & 0xF,
                        bnb.data.view(-1)[-1].item<uint8_t>() & 0xF);
            }
          }
          // qtrain's dequantize of bnb's codes against bnb's own dequantize_4bit: equal values
          // (bnb's C++ kernel turns fp4 code 8 into -0.0, the quant_map into +0.0).
          const at::Tensor ref_dequant = ref.tensor(module + ".dequant");
          ASSERT_EQ(ref_dequant.scalar_type(), x.scalar_type());
          EXPECT_TRUE(at::equal(bnb.dequantize(x.scalar_type()), ref_dequant)) << "dequantized";
        }
      }
    }
  }

  t::Divergences total;
  for (const auto& [module, d] : by_case) {
    if (d.total() == 0) continue;
    std::cout << "  " << module << ": differs from bnb-cpu in " << d.total()
              << " codes (partial-block division " << d.partial_block_division
              << ", fp4 sign of zero " << d.fp4_zero_sign << ", fp4 thresholds " << d.fp4_threshold
              << ", nested lookup table " << d.nested_lut << ")\n";
    total.partial_block_division += d.partial_block_division;
    total.fp4_zero_sign += d.fp4_zero_sign;
    total.fp4_threshold += d.fp4_threshold;
    total.nested_lut += d.nested_lut;
    total.unexplained += d.unexplained;
    if (module.find(".nf4.") != std::string::npos && module.find(".plain") != std::string::npos) {
      EXPECT_EQ(d.fp4_zero_sign + d.fp4_threshold, 0) << module;
    }
  }
  std::cout << "4-bit codes compared: " << codes_compared
            << "; differing: " << total.total() - total.nested_lut
            << " (all in documented zones); nested codes "
            << "differing: " << total.nested_lut << "\n";
  EXPECT_EQ(total.unexplained, 0);
}

QuantizedTensor roundtrip(const QuantizedTensor& q) {
  return from_bnb_entries("model.layers.0.mlp.up_proj",
                          to_bnb_entries("model.layers.0.mlp.up_proj", q), "roundtrip");
}

TEST(BnbInteropTest, RoundTripIsBitExact) {
  for (const auto& [name, x] : interop_inputs()) {
    for (QuantType type : {QuantType::kNF4, QuantType::kFP4}) {
      for (int64_t blocksize : {32, 64, 256, 4096}) {
        for (bool nested : {false, true}) {
          SCOPED_TRACE(name + " " + quant_type_name(type) + " " + std::to_string(blocksize) +
                       (nested ? " nested" : ""));
          const QuantizedTensor q = quantize(x, {type, blocksize, nested});
          const QuantizedTensor back = roundtrip(q);
          EXPECT_EQ(back.type, q.type);
          EXPECT_EQ(back.shape, q.shape);
          EXPECT_EQ(back.dtype, q.dtype);
          EXPECT_EQ(back.blocksize, q.blocksize);
          expect_same_bits(back.data, q.data, "data");
          expect_same_bits(back.code, q.code, "code");
          ASSERT_EQ(back.nested.has_value(), nested);
          if (nested) {
            expect_same_bits(back.nested->codes, q.nested->codes, "nested codes");
            expect_same_bits(back.nested->absmax, q.nested->absmax, "nested absmax");
            expect_same_bits(back.nested->code, q.nested->code, "nested code");
            EXPECT_EQ(bits(back.nested->offset), bits(q.nested->offset));
            EXPECT_EQ(back.nested->blocksize, q.nested->blocksize);
          } else {
            expect_same_bits(back.absmax, q.absmax, "absmax");
          }
          expect_same_bits(back.dequantize(at::kFloat), q.dequantize(at::kFloat), "dequantized");
        }
      }
    }
  }
}

}  // namespace
}  // namespace qtrain
