// Stands in for ggml.h when llama.cpp's common/json.cpp is built inside qtrain: it only needs
// GGML_ASSERT (for nlohmann's JSON_ASSERT), which aborts like ggml's.
#pragma once

#include <cstdlib>

#define GGML_ASSERT(x) ((x) ? (void)0 : std::abort())
