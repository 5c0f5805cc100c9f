// A finished run's metrics.jsonl, read by the CLI tests: the rows that carry a key, and that key's
// values in step order. Lines that are not JSON objects are skipped.
#pragma once

#include <nlohmann/json.hpp>

#include <fstream>
#include <string>
#include <vector>

namespace qtrain::testing {

inline std::vector<nlohmann::json> metrics_rows_with(const std::string& run_dir,
                                                     const std::string& key) {
  std::vector<nlohmann::json> out;
  std::ifstream in(run_dir + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    const auto row = nlohmann::json::parse(line, nullptr, false);
    if (row.is_object() && row.contains(key)) out.push_back(row);
  }
  return out;
}

inline std::vector<double> metric_values(const std::string& run_dir, const std::string& key) {
  std::vector<double> out;
  for (const auto& row : metrics_rows_with(run_dir, key)) out.push_back(row[key].get<double>());
  return out;
}

}  // namespace qtrain::testing
