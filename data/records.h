// Dataset records: the JSON objects of a dataset file, each with where it came from so that later
// errors (a missing field, an unknown role) can name the file and line.
//
//   .jsonl  one JSON object per line; blank lines are ignored
//   .json   one JSON array of objects (line numbers are those of each object's opening brace)
//   .txt    the whole file is one record {"text": <contents>}; a directory reads every *.txt file
//           directly inside it, sorted by name
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace qtrain {

struct Record {
  nlohmann::json value;  // a JSON object
  std::string file;
  int64_t line = 0;  // 1-based
};

// data.max_record_bytes' default: the most bytes one record may take in its file.
constexpr int64_t kDefaultMaxRecordBytes = int64_t{8} << 20;

// Reads every record of `path`. Errors: Error(kIo) when it cannot be read; Error(kFormat) naming
// file and line for malformed JSON, a value that is not an object, or a record (a .jsonl line, a
// .json array element, a .txt file) of more than `max_record_bytes`; Error(kConfig) for an
// unknown extension and for a dataset without records ("no samples in <file>").
// With skip_bad_lines, those bad records are logged and skipped instead, and `*skipped`
// (optional) counts them.
std::vector<Record> read_records(const std::string& path, bool skip_bad_lines = false,
                                 int64_t* skipped = nullptr,
                                 int64_t max_record_bytes = kDefaultMaxRecordBytes);

}  // namespace qtrain
