#include "data/records.h"

#include "data/unicode_text.h"

#include "core/error.h"
#include "core/json_file.h"
#include "core/log.h"
#include "core/read_file.h"
#include "core/text.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

namespace qtrain {

namespace fs = std::filesystem;

namespace {

std::string read_whole_file(const std::string& path) {
  return read_small_file(path, kMaxDatasetFileBytes, "dataset file");
}

// "malformed JSON at column 7: syntax error ...": nlohmann's message without its exception id
// ("[json.exception.parse_error.101] ") and its own line number, which counts from the parsed
// text rather than the file (the error context carries the file's line).
std::string malformed_json_message(const nlohmann::json::exception& e) {
  std::string text = e.what();
  const auto id_end = text.find("] ");
  if (!text.empty() && text[0] == '[' && id_end != std::string::npos)
    text = text.substr(id_end + 2);
  const auto column = text.find("column ");
  const auto colon = text.find(": ", column);
  if (text.rfind("parse error at ", 0) == 0 && column != std::string::npos &&
      colon != std::string::npos) {
    return "malformed JSON at " + text.substr(column, colon - column) + text.substr(colon);
  }
  return "malformed JSON: " + text;
}

// Reports a bad line: throws, or (skip_bad_lines) logs it and counts it.
class BadLinePolicy {
 public:
  BadLinePolicy(bool skip, int64_t* skipped, int64_t max_record_bytes)
      : skip_(skip), skipped_(skipped), max_record_bytes_(max_record_bytes) {}

  // Whether a record of `bytes` is within data.max_record_bytes; reports it when not. Tokenizing
  // costs memory and time in proportion to a record (SentencePiece: ~200 bytes per byte of text).
  bool record_fits(uint64_t bytes, const std::string& file, int64_t line) {
    if (bytes <= static_cast<uint64_t>(max_record_bytes_)) return true;
    report("record is " + std::to_string(bytes) + " bytes, more than data.max_record_bytes = " +
               std::to_string(max_record_bytes_) + " (split it, or raise the limit)",
           file, line);
    return false;
  }
  uint64_t max_record_bytes() const { return static_cast<uint64_t>(max_record_bytes_); }

  void report(const std::string& message, const std::string& file, int64_t line,
              const std::string& field = "") {
    Error error(ErrorKind::kFormat, message, {.file = file, .field = field, .line = line});
    if (!skip_) throw error;
    ++count_;
    if (skipped_) ++*skipped_;
    constexpr int64_t kLogged = 5;
    if (count_ <= kLogged) log::warn("skipping bad dataset line: ", error.what());
    if (count_ == kLogged + 1) log::warn("skipping more bad lines in ", file, " without logging");
  }

 private:
  bool skip_;
  int64_t* skipped_;
  int64_t max_record_bytes_;
  int64_t count_ = 0;
};

// Reads one line (without its '\n') into *text, holding at most max_bytes + 1 of its bytes: a
// longer line is only measured (*length). False at the end of the stream.
bool read_bounded_line(std::istream& in, uint64_t max_bytes, std::string* text, uint64_t* length) {
  text->clear();
  *length = 0;
  char chunk[1 << 16];
  for (bool first = true;; first = false) {
    in.getline(chunk, sizeof chunk);
    const auto extracted = static_cast<uint64_t>(in.gcount());
    const bool newline = !in.fail() && !in.eof();  // the '\n' was extracted and counted
    const bool chunk_full = in.fail() && !in.eof() && !in.bad();
    if (first && extracted == 0 && in.eof()) return false;
    const uint64_t stored = newline ? extracted - 1 : extracted;
    if (*length <= max_bytes) text->append(chunk, std::min(stored, max_bytes + 1 - *length));
    *length += stored;
    if (!chunk_full) return true;
    in.clear(in.rdstate() & ~std::ios::failbit);
  }
}

std::vector<Record> read_jsonl(const std::string& path, BadLinePolicy& policy) {
  refuse_special_file(path, "dataset file");  // /dev/zero would be one endless line
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_error(ErrorKind::kIo, "cannot open dataset file", {.file = path});
  std::vector<Record> records;
  std::string text;
  uint64_t length = 0;
  for (int64_t line = 1; read_bounded_line(in, policy.max_record_bytes(), &text, &length); ++line) {
    if (!policy.record_fits(length, path, line)) continue;
    if (std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isspace(c); })) {
      continue;
    }
    nlohmann::json value;
    try {
      value = parse_json_text(text, path);
    } catch (const nlohmann::json::exception& e) {  // syntax, or a number beyond double
      policy.report(malformed_json_message(e), path, line);
      continue;
    } catch (const Error& e) {  // nested too deep, or a key given twice
      policy.report(e.message(), path, line, e.context().field);
      continue;
    }
    if (!value.is_object()) {
      policy.report(std::string("expected a JSON object, found ") + value.type_name(), path, line);
      continue;
    }
    records.push_back({std::move(value), path, line});
  }
  if (in.bad()) throw_error(ErrorKind::kIo, "cannot read dataset file", {.file = path});
  return records;
}

int64_t line_of_offset(const std::string& text, size_t offset) {
  return 1 + std::count(text.begin(), text.begin() + std::min(offset, text.size()), '\n');
}

// Byte offsets where the elements of a top-level JSON array start (text already known to parse).
std::vector<size_t> array_element_offsets(const std::string& text) {
  std::vector<size_t> offsets;
  int depth = 0;
  bool in_string = false, escaped = false, expecting_element = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (std::isspace(static_cast<unsigned char>(c))) continue;
    if (depth == 1 && expecting_element && c != ']') {
      offsets.push_back(i);
      expecting_element = false;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth == 1) expecting_element = true;
    } else if (c == ']' || c == '}') {
      --depth;
    } else if (c == ',' && depth == 1) {
      expecting_element = true;
    }
  }
  return offsets;
}

// The bytes of element i of a top-level array: from its start to the next element's (or the
// closing bracket), less the comma and white space between them.
uint64_t element_bytes(const std::string& text, const std::vector<size_t>& offsets, size_t i) {
  size_t end = i + 1 < offsets.size() ? offsets[i + 1] : text.rfind(']');
  if (end == std::string::npos || end < offsets[i]) return 0;
  auto skip_space = [&] {
    while (end > offsets[i] && std::isspace(static_cast<unsigned char>(text[end - 1]))) --end;
  };
  skip_space();
  if (i + 1 < offsets.size() && end > offsets[i] && text[end - 1] == ',') --end;
  skip_space();
  return end - offsets[i];
}

std::vector<Record> read_json_array(const std::string& path, BadLinePolicy& policy) {
  const std::string text = read_whole_file(path);
  nlohmann::json array;
  try {
    array = parse_json_text(text, path);
  } catch (const nlohmann::json::parse_error& e) {
    throw_error(ErrorKind::kFormat, malformed_json_message(e),
                {.file = path, .line = line_of_offset(text, e.byte == 0 ? 0 : e.byte - 1)});
  } catch (const nlohmann::json::exception& e) {  // a number beyond double: no position given
    throw_error(ErrorKind::kFormat, malformed_json_message(e), {.file = path});
  }
  if (!array.is_array()) {
    throw_error(ErrorKind::kFormat,
                std::string("expected a JSON array of objects, found ") + array.type_name(),
                {.file = path, .line = 1});
  }
  const std::vector<size_t> offsets = array_element_offsets(text);
  std::vector<Record> records;
  int64_t line = 1;
  size_t counted_to = 0;
  for (size_t i = 0; i < array.size(); ++i) {
    if (i < offsets.size()) {  // always, unless the scan and the parser disagree
      line += std::count(text.begin() + counted_to, text.begin() + offsets[i], '\n');
      counted_to = offsets[i];
    }
    if (i < offsets.size() && !policy.record_fits(element_bytes(text, offsets, i), path, line)) {
      continue;
    }
    if (!array[i].is_object()) {
      policy.report(
          "element " + std::to_string(i) + " is not a JSON object but " + array[i].type_name(),
          path, line);
      continue;
    }
    records.push_back({std::move(array[i]), path, line});
  }
  return records;
}

std::vector<Record> read_text_files(const std::string& path, BadLinePolicy& policy) {
  std::vector<std::string> files;
  if (fs::is_directory(path)) {
    for (const auto& entry : fs::directory_iterator(path)) {
      const std::string name = entry.path().string();
      if (entry.is_regular_file() && ends_with(name, ".txt")) files.push_back(name);
    }
    std::sort(files.begin(), files.end());
  } else {
    files.push_back(path);
  }
  std::vector<Record> records;
  for (const auto& file : files) {
    std::error_code ec;
    const uintmax_t size = fs::file_size(file, ec);
    if (!ec && !policy.record_fits(size, file, 1)) continue;
    std::string text = read_whole_file(file);
    if (text.empty()) continue;
    if (!is_valid_utf8(text)) {
      // UTF-8 never uses the newline byte inside a character, so lines can be checked alone.
      int64_t line = 1;
      for (size_t begin = 0; begin <= text.size(); ++line) {
        const size_t end = std::min(text.find('\n', begin), text.size());
        if (!is_valid_utf8(std::string_view(text).substr(begin, end - begin))) break;
        begin = end + 1;
      }
      throw_error(ErrorKind::kFormat, "not valid UTF-8 text (save it as UTF-8)",
                  {.file = file, .line = line});
    }
    records.push_back({nlohmann::json{{"text", std::move(text)}}, file, 1});
  }
  return records;
}

}  // namespace

std::vector<Record> read_records(const std::string& path, bool skip_bad_lines, int64_t* skipped,
                                 int64_t max_record_bytes) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw_error(ErrorKind::kIo, "dataset not found", {.file = path});
  BadLinePolicy policy(skip_bad_lines, skipped, max_record_bytes);
  std::vector<Record> records;
  if (fs::is_directory(path, ec) || ends_with(path, ".txt")) {
    records = read_text_files(path, policy);
  } else if (ends_with(path, ".jsonl")) {
    records = read_jsonl(path, policy);
  } else if (ends_with(path, ".json")) {
    records = read_json_array(path, policy);
  } else {
    throw_error(ErrorKind::kConfig,
                "unknown dataset file type; expected .jsonl, .json, .txt or a directory of .txt",
                {.file = path});
  }
  if (records.empty()) throw_error(ErrorKind::kConfig, "no samples in " + path);
  return records;
}

}  // namespace qtrain
