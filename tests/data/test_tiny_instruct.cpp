// The tiny instruction dataset: the committed file is what the generator writes for its seed,
// and every answer is right (checked independently of the generator).
#include "core/error.h"
#include "data/records.h"
#include "data/tiny_instruct.h"
#include "tests/support/test_support.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <sstream>

namespace qtrain {
namespace {

using testing::ScratchDir;

const char* const kCommitted = "recipes/data/tiny_instruct.jsonl";

std::vector<std::string> split_words(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

std::string join(const std::vector<std::string>& words) {
  std::string out;
  for (const auto& w : words) out += (out.empty() ? "" : " ") + w;
  return out;
}

// The word between `prefix` and `suffix` in `text`.
std::string between(const std::string& text, const std::string& prefix, const std::string& suffix) {
  EXPECT_EQ(text.rfind(prefix, 0), 0u) << text;
  return text.substr(prefix.size(), text.size() - prefix.size() - suffix.size());
}

// Checks one sample's answer; returns the task's name.
std::string check_answer(const std::string& instruction, const std::string& input,
                         const std::string& output) {
  static const std::vector<std::string> days = {"Monday", "Tuesday",  "Wednesday", "Thursday",
                                                "Friday", "Saturday", "Sunday"};
  static const std::vector<std::string> months = {"January",   "February", "March",    "April",
                                                  "May",       "June",     "July",     "August",
                                                  "September", "October",  "November", "December"};
  auto next_in = [](const std::vector<std::string>& cycle, const std::string& item) {
    const auto it = std::find(cycle.begin(), cycle.end(), item);
    EXPECT_NE(it, cycle.end()) << item;
    return cycle[(it - cycle.begin() + 1) % cycle.size()];
  };
  if (instruction == "Reverse the order of the words.") {
    auto words = split_words(input);
    std::reverse(words.begin(), words.end());
    EXPECT_EQ(output, join(words));
    return "reverse";
  }
  if (instruction == "Sort these numbers from smallest to largest.") {
    std::vector<int> numbers;
    for (const auto& w : split_words(input)) numbers.push_back(std::stoi(w));
    std::sort(numbers.begin(), numbers.end());
    std::vector<std::string> words;
    for (int n : numbers) words.push_back(std::to_string(n));
    EXPECT_EQ(output, join(words));
    return "sort";
  }
  if (instruction.rfind("Repeat the word ", 0) == 0) {
    const std::string w = between(instruction, "Repeat the word ", " three times.");
    EXPECT_EQ(output, w + " " + w + " " + w);
    return "repeat";
  }
  if (instruction.rfind("What day comes after ", 0) == 0) {
    EXPECT_EQ(output, next_in(days, between(instruction, "What day comes after ", "?")));
    return "day";
  }
  if (instruction.rfind("What month comes after ", 0) == 0) {
    EXPECT_EQ(output, next_in(months, between(instruction, "What month comes after ", "?")));
    return "month";
  }
  if (instruction == "Write these words in capital letters.") {
    std::string upper = input;
    for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    EXPECT_EQ(output, upper);
    return "capitals";
  }
  if (instruction.rfind("How many letters are in the word ", 0) == 0) {
    EXPECT_EQ(output, std::to_string(
                          between(instruction, "How many letters are in the word ", "?").size()));
    return "count";
  }
  if (instruction == "What is the last word?") {
    EXPECT_EQ(output, split_words(input).back());
    return "last";
  }
  if (instruction.rfind("What is the opposite of ", 0) == 0) {
    static const std::map<std::string, std::string> antonyms = {
        {"hot", "cold"},   {"big", "small"},     {"up", "down"},     {"fast", "slow"},
        {"old", "new"},    {"light", "dark"},    {"open", "closed"}, {"early", "late"},
        {"happy", "sad"},  {"high", "low"},      {"full", "empty"},  {"hard", "soft"},
        {"long", "short"}, {"rich", "poor"},     {"left", "right"},  {"strong", "weak"},
        {"first", "last"}, {"inside", "outside"}};
    const std::string word = between(instruction, "What is the opposite of ", "?");
    const auto forward = antonyms.find(word);
    const bool reverse_match = std::any_of(antonyms.begin(), antonyms.end(), [&](const auto& p) {
      return p.second == word && p.first == output;
    });
    EXPECT_TRUE((forward != antonyms.end() && forward->second == output) || reverse_match)
        << word << " -> " << output;
    return "opposite";
  }
  if (instruction.rfind("What is ", 0) == 0) {
    const auto words = split_words(between(instruction, "What is ", "?"));
    EXPECT_EQ(words.size(), 3u);
    EXPECT_EQ(words.at(1), "plus");
    EXPECT_EQ(output, std::to_string(std::stoi(words.at(0)) + std::stoi(words.at(2))));
    return "add";
  }
  ADD_FAILURE() << "unknown task: " << instruction;
  return "";
}

TEST(TinyInstruct, CommittedFileIsTheGeneratorsOutput) {
  ScratchDir dir;
  write_tiny_instruct_dataset(dir.file("d.jsonl"), 1500, 0);
  const std::string regenerated = testing::read_file(dir.file("d.jsonl"));
  EXPECT_EQ(regenerated, tiny_instruct_jsonl(1500, 0));
  const std::string committed = testing::read_file(testing::source_dir() + "/" + kCommitted);
  EXPECT_EQ(regenerated, committed)
      << "regenerate with: qtiny --dataset " << kCommitted << " --samples 1500 --seed 0";
  EXPECT_LT(committed.size(), 300u * 1024);
  EXPECT_NE(tiny_instruct_jsonl(50, 1), tiny_instruct_jsonl(50, 0));
  EXPECT_EQ(tiny_instruct_jsonl(50, 0), committed.substr(0, tiny_instruct_jsonl(50, 0).size()));
}

TEST(TinyInstruct, EveryAnswerIsRightAndEveryTaskAppears) {
  const auto records = read_records(testing::source_dir() + "/" + kCommitted);
  ASSERT_EQ(records.size(), 1500u);
  std::map<std::string, int> tasks;
  std::map<std::string, int> instructions;
  for (const Record& r : records) {
    ASSERT_EQ(r.value.size(), 3u);
    const std::string instruction = r.value.at("instruction"), input = r.value.at("input"),
                      output = r.value.at("output");
    ++tasks[check_answer(instruction, input, output)];
    for (unsigned char c : instruction + input + output) ASSERT_LT(c, 128) << "plain ASCII";
  }
  EXPECT_EQ(tasks.size(), 10u);
  for (const auto& [task, count] : tasks) EXPECT_GT(count, 100) << task;
}

TEST(TinyInstruct, RejectsAnEmptyDataset) {
  EXPECT_THROW(tiny_instruct_jsonl(0, 0), Error);
}

}  // namespace
}  // namespace qtrain
