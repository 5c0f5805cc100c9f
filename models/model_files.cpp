#include "models/model_files.h"

#include "core/error.h"

namespace qtrain {
namespace fs = std::filesystem;

void copy_model_side_files(const fs::path& src, const fs::path& dst) {
  static const char* const kSideFiles[] = {
      "generation_config.json",  "tokenizer.json",    "tokenizer.model", "tokenizer_config.json",
      "special_tokens_map.json", "added_tokens.json", "vocab.json",      "merges.txt",
      "chat_template.jinja",     "chat_template.json"};
  for (const char* file : kSideFiles) {
    if (!fs::exists(src / file)) continue;
    std::error_code ec;
    fs::copy_file(src / file, dst / file, fs::copy_options::overwrite_existing, ec);
    if (ec)
      throw_error(ErrorKind::kIo, "cannot copy: " + ec.message(), {.file = (src / file).string()});
  }
}

}  // namespace qtrain
