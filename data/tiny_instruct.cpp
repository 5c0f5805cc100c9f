#include "data/tiny_instruct.h"

#include "core/atomic_file.h"
#include "core/error.h"
#include "data/shuffle.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <functional>
#include <random>
#include <vector>

namespace qtrain {

namespace {

const std::vector<std::string> kWords = {
    "apple",  "river",   "stone",  "house",  "green",  "light",  "paper",   "music",  "water",
    "cloud",  "bread",   "chair",  "table",  "garden", "window", "little",  "yellow", "orange",
    "horse",  "bird",    "tree",   "road",   "book",   "letter", "school",  "friend", "summer",
    "winter", "morning", "night",  "market", "silver", "golden", "forest",  "castle", "ocean",
    "candle", "mirror",  "pencil", "basket", "bridge", "island", "planet",  "rabbit", "tiger",
    "flower", "meadow",  "kitten", "ladder", "rocket", "sugar",  "thunder", "valley", "wagon",
    "quiet",  "happy",   "brave",  "gentle", "simple", "strong", "bright",  "cold",   "warm"};

const std::array<const char*, 7> kDays = {"Monday", "Tuesday",  "Wednesday", "Thursday",
                                          "Friday", "Saturday", "Sunday"};
const std::array<const char*, 12> kMonths = {"January",   "February", "March",    "April",
                                             "May",       "June",     "July",     "August",
                                             "September", "October",  "November", "December"};
const std::vector<std::pair<std::string, std::string>> kOpposites = {
    {"hot", "cold"},   {"big", "small"},     {"up", "down"},     {"fast", "slow"},
    {"old", "new"},    {"light", "dark"},    {"open", "closed"}, {"early", "late"},
    {"happy", "sad"},  {"high", "low"},      {"full", "empty"},  {"hard", "soft"},
    {"long", "short"}, {"rich", "poor"},     {"left", "right"},  {"strong", "weak"},
    {"first", "last"}, {"inside", "outside"}};

struct Sample {
  std::string instruction;
  std::string input;
  std::string output;
};

class Generator {
 public:
  explicit Generator(uint64_t seed) : rng_(seed) {}

  Sample next() {
    using Task = Sample (Generator::*)();
    static const std::array<Task, 10> tasks = {&Generator::reverse_words, &Generator::sort_numbers,
                                               &Generator::repeat_word,   &Generator::next_day,
                                               &Generator::next_month,    &Generator::capitals,
                                               &Generator::count_letters, &Generator::add_numbers,
                                               &Generator::last_word,     &Generator::opposite};
    return (this->*tasks[below(tasks.size())])();
  }

 private:
  uint64_t below(uint64_t bound) { return uniform_below(rng_, bound); }
  const std::string& word() { return kWords[below(kWords.size())]; }
  std::vector<std::string> words(int64_t min_count, int64_t max_count) {
    std::vector<std::string> out(min_count + below(max_count - min_count + 1));
    for (auto& w : out) w = word();
    return out;
  }
  static std::string join(const std::vector<std::string>& items) {
    std::string out;
    for (const auto& item : items) out += (out.empty() ? "" : " ") + item;
    return out;
  }

  Sample reverse_words() {
    std::vector<std::string> list = words(3, 5);
    const std::string input = join(list);
    std::reverse(list.begin(), list.end());
    return {"Reverse the order of the words.", input, join(list)};
  }
  Sample sort_numbers() {
    std::vector<int64_t> numbers(3 + below(3));
    for (auto& n : numbers) n = 1 + static_cast<int64_t>(below(99));
    auto text = [](const std::vector<int64_t>& values) {
      std::vector<std::string> parts;
      for (int64_t v : values) parts.push_back(std::to_string(v));
      return join(parts);
    };
    const std::string input = text(numbers);
    std::sort(numbers.begin(), numbers.end());
    return {"Sort these numbers from smallest to largest.", input, text(numbers)};
  }
  Sample repeat_word() {
    const std::string w = word();
    return {"Repeat the word " + w + " three times.", "", w + " " + w + " " + w};
  }
  Sample next_day() {
    const uint64_t i = below(kDays.size());
    return {std::string("What day comes after ") + kDays[i] + "?", "",
            kDays[(i + 1) % kDays.size()]};
  }
  Sample next_month() {
    const uint64_t i = below(kMonths.size());
    return {std::string("What month comes after ") + kMonths[i] + "?", "",
            kMonths[(i + 1) % kMonths.size()]};
  }
  Sample capitals() {
    const std::string input = join(words(2, 3));
    std::string output = input;
    for (char& c : output) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return {"Write these words in capital letters.", input, output};
  }
  Sample count_letters() {
    const std::string w = word();
    return {"How many letters are in the word " + w + "?", "", std::to_string(w.size())};
  }
  Sample add_numbers() {
    const int64_t a = static_cast<int64_t>(below(50)), b = static_cast<int64_t>(below(50));
    return {"What is " + std::to_string(a) + " plus " + std::to_string(b) + "?", "",
            std::to_string(a + b)};
  }
  Sample last_word() {
    const std::vector<std::string> list = words(3, 5);
    return {"What is the last word?", join(list), list.back()};
  }
  Sample opposite() {
    const auto& pair = kOpposites[below(kOpposites.size())];
    const bool flip = below(2) == 1;
    return {"What is the opposite of " + (flip ? pair.second : pair.first) + "?", "",
            flip ? pair.first : pair.second};
  }

  std::mt19937_64 rng_;
};

}  // namespace

std::string tiny_instruct_jsonl(int64_t n, uint64_t seed) {
  if (n < 1) {
    throw_error(ErrorKind::kConfig,
                "the tiny dataset needs at least 1 sample, got " + std::to_string(n));
  }
  Generator generator(seed);
  std::string out;
  for (int64_t i = 0; i < n; ++i) {
    Sample sample = generator.next();
    nlohmann::ordered_json line;
    line["instruction"] = std::move(sample.instruction);
    line["input"] = std::move(sample.input);
    line["output"] = std::move(sample.output);
    out += line.dump() + "\n";
  }
  return out;
}

void write_tiny_instruct_dataset(const std::string& path, int64_t n, uint64_t seed) {
  write_file_atomically(path, tiny_instruct_jsonl(n, seed));
}

}  // namespace qtrain
