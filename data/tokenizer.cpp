#include "data/tokenizer.h"

#include "core/error.h"
#include "core/json_file.h"
#include "core/read_file.h"
#include "data/bpe_tokenizer.h"
#include "data/sentencepiece_tokenizer.h"

#include <nlohmann/json.hpp>

#include <filesystem>

namespace qtrain {

namespace fs = std::filesystem;

Tokenizer::~Tokenizer() = default;

int64_t padding_id(const Tokenizer& tokenizer) {
  return tokenizer.pad_id() >= 0 ? tokenizer.pad_id() : 0;
}

nlohmann::json read_tokenizer_config(const std::string& path) {
  const std::string text = read_small_file(path, kMaxConfigJsonBytes, "tokenizer config");
  try {
    return parse_json_text(text, path);
  } catch (const nlohmann::json::exception& e) {
    throw_error(ErrorKind::kFormat, std::string("malformed JSON: ") + e.what(), {.file = path});
  }
}

namespace {

// add_bos_token / add_eos_token of tokenizer_config.json; absent keys keep the defaults.
void read_special_token_defaults(const std::string& path, Tokenizer& tokenizer) {
  const nlohmann::json config = read_tokenizer_config(path);
  if (!config.is_object()) {
    throw_error(ErrorKind::kFormat, "tokenizer config is not a JSON object", {.file = path});
  }
  auto flag = [&](const char* key, bool fallback) {
    const auto it = config.find(key);
    if (it == config.end() || it->is_null()) return fallback;
    if (!it->is_boolean()) {
      throw_error(ErrorKind::kFormat, "must be true or false", {.file = path, .field = key});
    }
    return it->get<bool>();
  };
  tokenizer.set_special_token_defaults(flag("add_bos_token", tokenizer.add_bos_default()),
                                       flag("add_eos_token", tokenizer.add_eos_default()));
}

// Whether a tokenizer file is there. A symbolic link to nothing (a half-copied Hugging Face
// cache, whose files are links into blobs/) is an error naming it: passing over it would pick the
// other tokenizer, or drop tokenizer_config.json's settings, without a word.
bool tokenizer_file_present(const fs::path& path) {
  std::error_code ec;
  if (fs::exists(path, ec)) return true;
  if (!fs::is_symlink(fs::symlink_status(path, ec))) return false;
  const fs::path target = fs::read_symlink(path, ec);
  throw_error(ErrorKind::kIo,
              "is a symbolic link to '" + target.string() + "', which does not exist",
              {.file = path.string()});
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_dir) {
  std::error_code ec;
  if (fs::is_regular_file(model_dir, ec)) {
    return std::make_unique<SentencePieceTokenizer>(SentencePieceTokenizer::load(model_dir));
  }
  const fs::path dir(model_dir);
  const fs::path spm = dir / "tokenizer.model";
  const fs::path hf_json = dir / "tokenizer.json";
  const fs::path config = dir / "tokenizer_config.json";
  std::unique_ptr<Tokenizer> tokenizer;
  const bool has_config = tokenizer_file_present(config);
  if (tokenizer_file_present(spm)) {
    tokenizer =
        std::make_unique<SentencePieceTokenizer>(SentencePieceTokenizer::load(spm.string()));
  } else if (tokenizer_file_present(hf_json)) {
    // Its special tokens (bos_token, ...) live in tokenizer_config.json too.
    tokenizer = std::make_unique<BpeTokenizer>(
        BpeTokenizer::load(hf_json.string(), has_config ? config.string() : ""));
  } else {
    throw_error(ErrorKind::kIo, "no tokenizer.model or tokenizer.json in the directory",
                {.file = model_dir});
  }
  if (has_config) read_special_token_defaults(config.string(), *tokenizer);
  return tokenizer;
}

}  // namespace qtrain
