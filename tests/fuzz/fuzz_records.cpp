// libFuzzer target: a dataset file through the record reader. The first byte picks the format
// (.jsonl, .json, .txt) and whether malformed .jsonl lines are skipped; the rest is the file.
#include "data/records.h"
#include "tests/fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const char* const kExtensions[] = {".jsonl", ".json", ".txt"};
  const std::string name = std::string("data") + kExtensions[data[0] % 3];
  const bool skip_bad_lines = (data[0] & 0x80) != 0;
  const std::string path = qtrain::fuzz::write_scratch(name, data + 1, size - 1);
  qtrain::fuzz::expect_success_or_error([&] {
    int64_t skipped = 0;
    const std::vector<qtrain::Record> records =
        qtrain::read_records(path, skip_bad_lines, &skipped);
    for (const qtrain::Record& record : records) {
      if (!record.value.is_object() || record.line < 1) {
        qtrain::fuzz::property_failed("a record that is not an object or has no line");
      }
    }
  });
  return 0;
}
