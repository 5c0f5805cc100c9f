#include "data/sentencepiece_tokenizer.h"

#include "core/error.h"
#include "core/read_file.h"

#include <sentencepiece_processor.h>

namespace qtrain {

SentencePieceTokenizer::SentencePieceTokenizer(
    std::unique_ptr<sentencepiece::SentencePieceProcessor> processor, std::string source)
    : processor_(std::move(processor)), source_(std::move(source)) {}

SentencePieceTokenizer::SentencePieceTokenizer(SentencePieceTokenizer&&) noexcept = default;
SentencePieceTokenizer& SentencePieceTokenizer::operator=(SentencePieceTokenizer&&) noexcept =
    default;
SentencePieceTokenizer::~SentencePieceTokenizer() = default;

SentencePieceTokenizer SentencePieceTokenizer::load(const std::string& path) {
  return from_serialized(read_small_file(path, kMaxSentencePieceBytes, "SentencePiece model"),
                         path);
}

SentencePieceTokenizer SentencePieceTokenizer::from_serialized(const std::string& bytes,
                                                               const std::string& source) {
  auto processor = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto status = processor->LoadFromSerializedProto(bytes);
  if (!status.ok()) {
    throw_error(ErrorKind::kFormat,
                std::string("not a valid SentencePiece model: ") + status.message(),
                {.file = source});
  }
  if (processor->GetPieceSize() <= 0) {
    throw_error(ErrorKind::kFormat, "SentencePiece model has an empty vocabulary",
                {.file = source});
  }
  return SentencePieceTokenizer(std::move(processor), source);
}

std::vector<int64_t> SentencePieceTokenizer::encode(const std::string& text, bool add_bos,
                                                    bool add_eos) const {
  std::vector<int> pieces;
  const auto status = processor_->Encode(text, &pieces);
  if (!status.ok()) {
    throw_error(ErrorKind::kInternal,
                std::string("SentencePiece encode failed: ") + status.message(), {.file = source_});
  }
  std::vector<int64_t> ids;
  ids.reserve(pieces.size() + 2);
  if (add_bos && bos_id() >= 0) ids.push_back(bos_id());
  ids.insert(ids.end(), pieces.begin(), pieces.end());
  if (add_eos && eos_id() >= 0) ids.push_back(eos_id());
  return ids;
}

std::string SentencePieceTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::vector<int> pieces;
  pieces.reserve(ids.size());
  for (int64_t id : ids) pieces.push_back(check_id(id));
  std::string text;
  const auto status = processor_->Decode(pieces, &text);
  if (!status.ok()) {
    throw_error(ErrorKind::kInternal,
                std::string("SentencePiece decode failed: ") + status.message(), {.file = source_});
  }
  return text;
}

int SentencePieceTokenizer::check_id(int64_t id) const {
  if (id < 0 || id >= vocab_size()) {
    throw_error(ErrorKind::kFormat,
                "token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                    std::to_string(vocab_size()) + ")",
                {.file = source_});
  }
  return static_cast<int>(id);
}

int64_t SentencePieceTokenizer::vocab_size() const {
  return processor_->GetPieceSize();
}
int64_t SentencePieceTokenizer::bos_id() const {
  return processor_->bos_id();
}
int64_t SentencePieceTokenizer::eos_id() const {
  return processor_->eos_id();
}
int64_t SentencePieceTokenizer::unk_id() const {
  return processor_->unk_id();
}
int64_t SentencePieceTokenizer::pad_id() const {
  return processor_->pad_id();
}

const std::string& SentencePieceTokenizer::piece(int64_t id) const {
  return processor_->IdToPiece(check_id(id));
}
float SentencePieceTokenizer::score(int64_t id) const {
  return processor_->GetScore(check_id(id));
}
bool SentencePieceTokenizer::is_control(int64_t id) const {
  return processor_->IsControl(check_id(id));
}
bool SentencePieceTokenizer::is_unknown(int64_t id) const {
  return processor_->IsUnknown(check_id(id));
}
bool SentencePieceTokenizer::is_byte(int64_t id) const {
  return processor_->IsByte(check_id(id));
}
int64_t SentencePieceTokenizer::piece_to_id(const std::string& piece) const {
  return processor_->PieceToId(piece);
}

}  // namespace qtrain
