#include "quant/dequantize_rows.h"

#include "core/error.h"
#include "quant/blockwise.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <string>
#include <vector>

namespace qtrain {
namespace {

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

void check_rows(const std::vector<int64_t>& shape, int64_t row_begin, int64_t row_end,
                const char* what) {
  if (shape.size() != 2) {
    throw_error(ErrorKind::kShape, std::string(what) + ": the weight must be 2-D [out, in]");
  }
  if (row_begin < 0 || row_begin > row_end || row_end > shape[0]) {
    throw_error(ErrorKind::kShape, std::string(what) + ": rows [" + std::to_string(row_begin) +
                                       ", " + std::to_string(row_end) + ") are not inside [0, " +
                                       std::to_string(shape[0]) + ")");
  }
}

// float32 [block_end - block_begin]: the absmax of blocks [block_begin, block_end): from the
// weight's decoded-absmax cache where it applies (CPU), else with nested quantization undone for
// the nested blocks covering them only (same per-element arithmetic as decode_nested_absmax).
at::Tensor block_absmax_range(const QuantizedTensor& w, int64_t block_begin, int64_t block_end) {
  const int64_t count = block_end - block_begin;
  if (!w.nested) return w.absmax.reshape({-1}).narrow(0, block_begin, count);
  const at::Tensor cached = w.cached_block_absmax();
  if (cached.defined()) return cached.narrow(0, block_begin, count);
  const NestedAbsmax& nested = *w.nested;
  const int64_t total = nested.codes.numel();
  const int64_t first = block_begin / nested.blocksize;
  const int64_t last = ceil_div(block_end, nested.blocksize);  // exclusive
  const int64_t codes_begin = first * nested.blocksize;
  const int64_t codes_end = std::min(last * nested.blocksize, total);
  const at::Tensor codes =
      nested.codes.reshape({-1}).narrow(0, codes_begin, codes_end - codes_begin);
  const at::Tensor scales = nested.absmax.reshape({-1}).narrow(0, first, last - first);
  const at::Tensor centered =
      dequantize_blockwise_8bit(codes, scales, nested.code, nested.blocksize, at::kFloat);
  return (centered + nested.offset).narrow(0, block_begin - codes_begin, count);
}

}  // namespace

at::Tensor dequantize_rows(const QuantizedTensor& w, int64_t row_begin, int64_t row_end,
                           at::ScalarType out_dtype) {
  check_rows(w.shape, row_begin, row_end, "dequantize_rows");
  const int64_t in = w.shape[1], rows = row_end - row_begin;
  if (row_begin == 0 && row_end == w.shape[0]) return w.dequantize(out_dtype);
  if (rows == 0) return at::empty({0, in}, w.data.options().dtype(out_dtype));
  const int64_t n = w.numel(), bs = w.blocksize;
  const int64_t first = row_begin * in, last = row_end * in;  // elements [first, last)
  const int64_t block_begin = first / bs, block_end = ceil_div(last, bs);
  const int64_t begin = block_begin * bs, end = std::min(block_end * bs, n);  // covering elements
  const at::Tensor absmax = block_absmax_range(w, block_begin, block_end);
  at::Tensor flat;  // [end - begin]
  if (w.type == QuantType::kInt8) {
    flat =
        dequantize_int8(w.data.reshape({-1}).narrow(0, begin, end - begin), absmax, bs, out_dtype);
  } else {
    // Blocks hold an even number of elements: element `begin` is the high nibble of byte begin/2.
    flat = dequantize_4bit(w.data.reshape({-1}).narrow(0, begin / 2, ceil_div(end - begin, 2)),
                           absmax, w.code, end - begin, bs, out_dtype);
  }
  return flat.narrow(0, first - begin, last - first).view({rows, in});
}

at::Tensor dequantize_rows(const Int4GroupTensor& w, int64_t row_begin, int64_t row_end,
                           at::ScalarType out_dtype) {
  check_rows(w.shape, row_begin, row_end, "dequantize_rows");
  const int64_t rows = row_end - row_begin, groups = w.num_groups();
  Int4GroupTensor part = w;
  part.shape = {rows, w.shape[1]};
  part.codes = w.codes.narrow(0, row_begin, rows);
  // scales * (q - zeros), as Int4GroupTensor::dequantize computes it, without its temporaries.
  at::Tensor q = part.unpacked_codes().to(at::kFloat).view({rows, groups, w.group_size});
  q.sub_(w.zeros.narrow(0, row_begin, rows).unsqueeze(-1));
  q.mul_(w.scales.narrow(0, row_begin, rows).unsqueeze(-1));
  return q.view({rows, w.shape[1]}).to(out_dtype);
}

}  // namespace qtrain
