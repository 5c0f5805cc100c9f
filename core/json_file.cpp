#include "core/json_file.h"

#include "core/error.h"
#include "core/read_file.h"

#include <algorithm>
#include <cstddef>
#include <iterator>
#include <utility>
#include <vector>

namespace qtrain {
namespace {

using nlohmann::json;

// A char iterator that records how far the parser has read, so that a refusal made inside the
// SAX handler can name the line (nlohmann reports positions for syntax errors only).
class TrackedChars {
 public:
  using iterator_category = std::input_iterator_tag;
  using value_type = char;
  using difference_type = std::ptrdiff_t;
  using pointer = const char*;
  using reference = const char&;

  TrackedChars(const char* at, const char** read_to) : at_(at), read_to_(read_to) {}
  reference operator*() const { return *at_; }
  TrackedChars& operator++() {
    *read_to_ = ++at_;
    return *this;
  }
  TrackedChars operator++(int) {
    TrackedChars before = *this;
    ++*this;
    return before;
  }
  bool operator==(const TrackedChars& other) const { return at_ == other.at_; }
  bool operator!=(const TrackedChars& other) const { return at_ != other.at_; }

 private:
  const char* at_;
  const char** read_to_;
};

// A key for an error message: at most 64 bytes, control characters as \xNN.
std::string printable_key(const std::string& key) {
  constexpr size_t kShown = 64;
  std::string out;
  for (size_t i = 0; i < key.size() && i < kShown; ++i) {
    const auto c = static_cast<unsigned char>(key[i]);
    if (c < 0x20 || c == 0x7F) {
      static const char* hex = "0123456789ABCDEF";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += key[i];
    }
  }
  if (key.size() > kShown) out += "...";
  return out;
}

// nlohmann's DOM parser with two refusals: too deep a nesting and duplicate keys.
class StrictJsonBuilder {
 public:
  StrictJsonBuilder(std::string_view text, const char* const* read_to, std::string source,
                    int max_depth)
      : text_(text), read_to_(read_to), source_(std::move(source)), max_depth_(max_depth) {}

  bool null() { return add(nullptr); }
  bool boolean(bool value) { return add(value); }
  bool number_integer(json::number_integer_t value) { return add(value); }
  bool number_unsigned(json::number_unsigned_t value) { return add(value); }
  bool number_float(json::number_float_t value, const json::string_t&) { return add(value); }
  bool string(json::string_t& value) { return add(std::move(value)); }
  bool binary(json::binary_t& value) { return add(json(std::move(value))); }
  bool start_object(std::size_t) { return open(json::object()); }
  bool start_array(std::size_t) { return open(json::array()); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }

  bool key(json::string_t& key) {
    key_ = std::move(key);
    key_read_to_ = *read_to_;  // the duplicate's line: place() sees it only after its value
    return true;
  }

  // Rethrows nlohmann's own exception (parse_error with its position, or out_of_range for a
  // number beyond double), as json::parse would.
  template <class Exception>
  bool parse_error(std::size_t, const std::string&, const Exception& e) {
    throw e;
  }

  json take() { return std::move(root_); }

 private:
  // An open array or object, and the key its parent object holds it under (null in an array).
  // Paths are built from these only for an error message.
  struct OpenValue {
    json* value;
    const std::string* key;
  };

  // Where the next value goes: the root, the end of the open array, or the open object's key.
  OpenValue place(json value) {
    if (open_.empty()) {
      root_ = std::move(value);
      return {&root_, nullptr};
    }
    json& parent = *open_.back().value;
    if (parent.is_array()) {
      parent.push_back(std::move(value));
      return {&parent.back(), nullptr};
    }
    // try_emplace leaves key_ and value alone when the key is there already.
    const auto [it, inserted] =
        parent.get_ref<json::object_t&>().try_emplace(std::move(key_), std::move(value));
    if (!inserted) {
      fail("duplicate JSON key '" + printable_key(key_) + "'",
           path_with(key_segment(key_), kDuplicatePathShown), key_read_to_);
    }
    return {&it->second, &it->first};
  }

  bool add(json value) {
    place(std::move(value));
    return true;
  }

  bool open(json container) {
    if (static_cast<int>(open_.size()) >= max_depth_) {
      // Where the nesting starts; the rest is the same brackets over again.
      fail("JSON nested deeper than " + std::to_string(max_depth_) + " levels",
           path_with(next_segment(), kDeepPathShown));
    }
    open_.push_back(place(std::move(container)));
    return true;
  }

  bool close() {
    open_.pop_back();
    return true;
  }

  // How open_[i] is reached from its parent: ".key" or "[index]" (it is the array's last element
  // while it is open); "" for the root.
  std::string segment_of(size_t i) const {
    if (i == 0) return "";
    if (open_[i].key != nullptr) return key_segment(*open_[i].key);
    return "[" + std::to_string(open_[i - 1].value->size() - 1) + "]";
  }

  // The segment of the value about to be placed.
  std::string next_segment() const {
    if (open_.empty()) return "";
    const json& parent = *open_.back().value;
    if (parent.is_array()) return "[" + std::to_string(parent.size()) + "]";
    return key_segment(key_);
  }

  static std::string key_segment(const std::string& key) { return "." + printable_key(key); }

  // The dotted path of the open values plus `last`, cut to `shown` bytes and "...".
  std::string path_with(const std::string& last, size_t shown) const {
    std::string path;
    for (size_t i = 0; i < open_.size() && path.size() <= shown; ++i) path += segment_of(i);
    if (path.size() <= shown) path += last;
    if (path.size() > shown) path = path.substr(0, shown) + "...";
    if (!path.empty() && path[0] == '.') path.erase(0, 1);
    return path;
  }

  static constexpr size_t kDuplicatePathShown = 200;
  static constexpr size_t kDeepPathShown = 48;

  // `read_to`: how far the parser had read at the fault (by default, now).
  [[noreturn]] void fail(const std::string& message, const std::string& field,
                         const char* read_to = nullptr) const {
    const size_t offset = static_cast<size_t>((read_to ? read_to : *read_to_) - text_.data());
    const auto line =
        1 + std::count(text_.begin(), text_.begin() + std::min(offset, text_.size()), '\n');
    throw_error(ErrorKind::kFormat, message, {.file = source_, .field = field, .line = line});
  }

  std::string_view text_;
  const char* const* read_to_;
  std::string source_;
  int max_depth_;
  json root_;
  std::vector<OpenValue> open_;
  std::string key_;
  const char* key_read_to_ = nullptr;
};

}  // namespace

json parse_json_text(std::string_view text, const std::string& source, int max_depth) {
  const char* read_to = text.data();
  StrictJsonBuilder builder(text, &read_to, source, max_depth);
  json::sax_parse(TrackedChars(text.data(), &read_to),
                  TrackedChars(text.data() + text.size(), &read_to), &builder);
  return builder.take();
}

json read_json_file(const std::string& path, const std::string& what) {
  const std::string text = read_small_file(path, kMaxConfigJsonBytes, what);
  try {
    return parse_json_text(text, path);
  } catch (const json::exception& e) {
    throw_error(ErrorKind::kFormat, std::string("invalid JSON: ") + e.what(), {.file = path});
  }
}

}  // namespace qtrain
