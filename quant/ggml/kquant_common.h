// What ggml's K-quant formats (q4_k.h, q6_k.h) share: the super-block size QK_K.
#pragma once

#include <cstdint>

namespace qtrain {

constexpr int64_t kQkK = 256;  // values per K-quant super-block (ggml's QK_K)

}  // namespace qtrain
