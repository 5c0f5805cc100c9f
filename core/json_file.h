// Reading a JSON file (config.json, adapter_config.json, ...) with errors that name it.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

namespace qtrain {

// Throws Error(kIo) when the file cannot be opened, Error(kFormat) with the parser's message
// when it is not JSON.
nlohmann::json read_json_file(const std::string& path);

}  // namespace qtrain
