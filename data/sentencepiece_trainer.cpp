#include "data/sentencepiece_trainer.h"

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/text.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <fstream>
#include <unordered_map>

namespace qtrain {
namespace {

// Feeds the non-empty lines of the corpus files to the trainer in order, without loading the
// whole corpus into memory first.
class FileLineIterator : public sentencepiece::SentenceIterator {
 public:
  explicit FileLineIterator(const std::vector<std::string>& files) : files_(files) { advance(); }

  bool done() const override { return done_; }
  void Next() override { advance(); }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override {
    if (failed_file_.empty()) return {};
    return {sentencepiece::util::StatusCode::kNotFound, "cannot read " + failed_file_};
  }
  const std::string& failed_file() const { return failed_file_; }

 private:
  void advance() {
    while (!done_) {
      if (stream_.is_open() && std::getline(stream_, line_)) {
        if (!line_.empty() && line_.back() == '\r') line_.pop_back();
        if (!line_.empty()) return;
        continue;
      }
      if (stream_.is_open()) {
        if (stream_.bad()) return fail(files_[next_file_ - 1]);
        stream_.close();
      }
      if (next_file_ == files_.size()) {
        done_ = true;
        return;
      }
      stream_.open(files_[next_file_++], std::ios::binary);
      if (!stream_) return fail(files_[next_file_ - 1]);
    }
  }
  void fail(const std::string& file) {
    failed_file_ = file;
    done_ = true;
  }

  const std::vector<std::string>& files_;
  size_t next_file_ = 0;
  std::ifstream stream_;
  std::string line_;
  std::string failed_file_;
  bool done_ = false;
};

}  // namespace

std::string train_sentencepiece(const std::vector<std::string>& corpus_files, int vocab_size,
                                const std::string& model_prefix_or_path,
                                const SentencePieceTrainOptions& options) {
  if (corpus_files.empty()) {
    throw_error(ErrorKind::kConfig, "no corpus files to train the tokenizer on");
  }
  for (const auto& file : corpus_files) {
    if (!std::ifstream(file)) {
      throw_error(ErrorKind::kIo, "cannot open tokenizer training text", {.file = file});
    }
  }
  const std::string path = ends_with(model_prefix_or_path, ".model")
                               ? model_prefix_or_path
                               : model_prefix_or_path + ".model";

  // Llama 2's tokenizer settings, minus its sampling and threading, plus determinism.
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(vocab_size)},
      {"character_coverage", "1.0"},
      {"byte_fallback", "true"},
      {"split_digits", "true"},
      {"split_by_unicode_script", "true"},
      {"split_by_number", "true"},
      {"split_by_whitespace", "true"},
      {"allow_whitespace_only_pieces", "true"},
      {"max_sentencepiece_length", "16"},
      {"normalization_rule_name", "identity"},
      {"add_dummy_prefix", "true"},
      {"remove_extra_whitespaces", "false"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"unk_piece", "<unk>"},
      {"bos_piece", "<s>"},
      {"eos_piece", "</s>"},
      {"hard_vocab_limit", options.hard_vocab_limit ? "true" : "false"},
      {"num_threads", "1"},
      {"shuffle_input_sentence", "false"},
      {"input_sentence_size", std::to_string(options.max_sentences)},
      {"seed_sentencepiece_size", std::to_string(options.seed_sentencepiece_size)},
      {"minloglevel", "2"},
  };
  sentencepiece::SetRandomGeneratorSeed(0);
  FileLineIterator lines(corpus_files);
  std::string model;
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &lines, &model);
  if (!lines.failed_file().empty()) {
    throw_error(ErrorKind::kIo, "cannot read tokenizer training text",
                {.file = lines.failed_file()});
  }
  if (!status.ok()) {
    throw_error(ErrorKind::kConfig,
                std::string("SentencePiece training failed: ") + status.message(), {.file = path});
  }
  write_file_atomically(path, model);
  return path;
}

}  // namespace qtrain
