// A small instruction dataset for tests and demos (nothing can be downloaded here): simple,
// deterministic, learnable tasks in plain English, as Alpaca JSONL.
#pragma once

#include <cstdint>
#include <string>

namespace qtrain {

// The JSONL text of `n` samples drawn from `seed`: one {"instruction", "input", "output"} object
// per line (input "" for tasks without one). Tasks: reverse the words, sort numbers, repeat a word
// three times, the day or month after another, capital letters, count letters, add two numbers,
// the last word, opposites. The same (n, seed) gives the same bytes on every platform.
std::string tiny_instruct_jsonl(int64_t n, uint64_t seed);

// Writes tiny_instruct_jsonl(n, seed) to `path` atomically. Throws Error(kConfig) for n < 1,
// Error(kIo) when the file cannot be written.
void write_tiny_instruct_dataset(const std::string& path, int64_t n, uint64_t seed);

}  // namespace qtrain
