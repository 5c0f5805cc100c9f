// Rows of a frozen 2-D quantized weight, dequantized without building the whole weight: what the
// sliced frozen linear (quant/frozen_linear.h) multiplies by. Each returns exactly the values the
// whole weight's dequantize(out_dtype) holds in those rows.
#pragma once

#include "quant/int4_group.h"
#include "quant/quantized_tensor.h"

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace qtrain {

// w shape [out, in] (NF4/FP4/INT8 blockwise), 0 <= row_begin <= row_end <= out
// -> [row_end - row_begin, in] in out_dtype. Blocks run along the flattened weight, so a row range
// may start or end inside a block: the blocks covering it are dequantized (at most two blocks
// more than the rows), then narrowed to the rows. A nested absmax is undone for those blocks only.
// Throws Error(kShape) for a weight that is not 2-D or a row range outside it.
at::Tensor dequantize_rows(const QuantizedTensor& w, int64_t row_begin, int64_t row_end,
                           at::ScalarType out_dtype);

// Group-wise INT4: groups never cross rows, so only rows [row_begin, row_end) are read. The
// arithmetic of Int4GroupTensor::dequantize (float32, then one cast) done in place: at most 6
// bytes per element live at once, the bf16 result included (dequantize holds 12), so the slots
// use it for whole weights too.
at::Tensor dequantize_rows(const Int4GroupTensor& w, int64_t row_begin, int64_t row_end,
                           at::ScalarType out_dtype);

}  // namespace qtrain
