#include "export/export_formats.h"

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/log.h"
#include "core/staging_dir.h"
#include "export/gguf_export.h"
#include "export/gptq_export.h"
#include "export/hf_merged_export.h"
#include "export/qalora_int4.h"
#include "export/qalora_q4_1.h"
#include "formats/bnb/bnb_checkpoint.h"
#include "formats/gguf/gguf_mix.h"
#include "formats/gguf/gguf_reader.h"
#include "models/bnb_4bit_save.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <map>
#include <optional>
#include <set>
#include <sstream>

namespace qtrain {
namespace fs = std::filesystem;
namespace {

const std::pair<const char*, ExportFormat> kFormats[] = {{"adapter", ExportFormat::kAdapter},
                                                         {"merged-bf16", ExportFormat::kMergedBf16},
                                                         {"merged-fp16", ExportFormat::kMergedFp16},
                                                         {"nf4", ExportFormat::kNf4},
                                                         {"gguf", ExportFormat::kGguf},
                                                         {"gptq-int4", ExportFormat::kGptqInt4}};

// Removes a staging directory unless release()d.
class StagingGuard {
 public:
  explicit StagingGuard(fs::path path) : path_(std::move(path)) {}
  ~StagingGuard() {
    if (!path_.empty()) remove_tree(path_);
  }
  const fs::path& path() const { return path_; }
  void release() { path_.clear(); }

 private:
  fs::path path_;
};

// Moves the complete staged directory onto `out`, replacing an old one only now.
void publish_dir(StagingGuard& staged, const fs::path& out) {
  std::error_code ec;
  if (fs::exists(out)) {
    const fs::path old = make_staging_dir(out);
    fs::remove(old, ec);
    fs::rename(out, old, ec);
    if (ec)
      throw_error(ErrorKind::kIo, "cannot move the old output aside: " + ec.message(),
                  {.file = out.string()});
    fs::rename(staged.path(), out, ec);
    if (ec) {
      std::error_code ignored;
      fs::rename(old, out, ignored);
      throw_error(ErrorKind::kIo, "cannot rename the export into place: " + ec.message(),
                  {.file = out.string()});
    }
    remove_tree(old);
  } else {
    fs::rename(staged.path(), out, ec);
    if (ec)
      throw_error(ErrorKind::kIo, "cannot rename the export into place: " + ec.message(),
                  {.file = out.string()});
  }
  staged.release();
}

GgufOutType gguf_out_type(const std::string& name) {
  try {
    return parse_gguf_outtype(name);
  } catch (const Error& e) {
    throw Error(ErrorKind::kUsage, std::string("--gguf-type: ") + e.what());
  }
}

void write_adapter(const ExportSource& source, const fs::path& dir) {
  nlohmann::json config = source.adapter.raw_config;
  // A builtin or relative base means nothing to PEFT elsewhere: name the directory it resolved to.
  config["base_model_name_or_path"] = fs::absolute(source.model_dir).lexically_normal().string();
  write_file_atomically((dir / "adapter_config.json").string(), config.dump(2) + "\n");
  std::error_code ec;
  fs::copy_file(fs::path(source.adapter_dir) / "adapter_model.safetensors",
                dir / "adapter_model.safetensors", ec);
  if (ec)
    throw_error(ErrorKind::kIo, "cannot copy: " + ec.message(),
                {.file = source.adapter_dir + "/adapter_model.safetensors"});
}

// The dtype the base stores its projections in (the merged staging copy keeps it).
at::ScalarType base_projection_dtype(const MergedWeights& weights) {
  for (const std::string& name : weights.names()) {
    if (weights.shape(name).size() == 2 && at::isFloatingType(weights.stored_dtype(name))) {
      return weights.stored_dtype(name);
    }
  }
  return at::kBFloat16;
}

// The GGUF file as a fresh reader sees it: "read back: 12 tensors (9 Q4_0, 3 F32), 25 metadata
// keys, 1.4 MiB". A writer bug that produced an unreadable file fails the export here.
std::string describe_written_gguf(const std::string& path) {
  const GgufReader written = GgufReader::open(path);
  std::map<std::string, int> by_type;
  for (const GgufTensorInfo& t : written.tensors()) ++by_type[ggml_type_name(t.type)];
  std::ostringstream out;
  out << "read back: " << written.tensors().size() << " tensors (";
  bool first = true;
  for (const auto& [type, count] : by_type) {
    out << (first ? "" : ", ") << count << " " << type;
    first = false;
  }
  out << "), " << written.metadata().size() << " metadata keys, " << std::fixed
      << std::setprecision(1) << written.file_size() / 1048576.0 << " MiB";
  return out.str();
}

// QA-LoRA's projections as exact Q4_1 blocks (qalora_q4_1.h); every other matrix F16, as it was
// in training, so that the file computes what the trained model computed. `stats` collects the
// blocks' rounding.
std::function<std::optional<GgufTensorChoice>(const std::string&, const std::vector<int64_t>&)>
qalora_q4_1_choice(const ExportSource& source, const MergedWeights& weights,
                   Q4_1MergeStats* stats) {
  const std::vector<std::string> skip =
      source.trained_on ? source.trained_on->skip_modules : std::vector<std::string>{"lm_head"};
  const std::vector<std::string> names = qalora_int4_projections(weights, skip);
  const std::set<std::string> int4(names.begin(), names.end());
  return [int4, &weights, stats](
             const std::string& name,
             const std::vector<int64_t>& shape) -> std::optional<GgufTensorChoice> {
    if (int4.count(name)) {
      return GgufTensorChoice{GgmlType::kQ4_1, [&weights, stats, name] {
                                return encode_qalora_q4_1(qalora_int4_weight(weights, name), stats);
                              }};
    }
    if (shape.size() == 2) return GgufTensorChoice{GgmlType::kF16, {}};
    return std::nullopt;
  };
}

std::string describe_q4_1(const Q4_1MergeStats& stats) {
  char line[256];
  std::snprintf(line, sizeof(line),
                "QA-LoRA merge held in %lld Q4_1 blocks (training codes, per-block fp16 scale and "
                "offset): max error vs the trained model %.3g (%.2g of a quantization step); "
                "other matrices F16",
                static_cast<long long>(stats.blocks), stats.max_error, stats.max_error_in_steps);
  return line;
}

int64_t count_adapters(const MergedWeights& weights) {
  int64_t n = 0;
  for (const std::string& name : weights.names()) n += weights.has_adapter(name);
  return n;
}

}  // namespace

ExportFormat export_format_from_name(const std::string& name) {
  std::string known;
  for (const auto& [text, format] : kFormats) {
    if (name == text) return format;
    known += known.empty() ? text : std::string(", ") + text;
  }
  throw_error(ErrorKind::kUsage, "unknown export format '" + name + "' (" + known + ")");
}

std::string export_format_name(ExportFormat format) {
  for (const auto& [text, f] : kFormats) {
    if (f == format) return text;
  }
  return "?";
}

ExportReport run_export(const ExportSource& source, const std::string& out,
                        const ExportOptions& options) {
  const GgufOutType gguf_type =
      options.format == ExportFormat::kGguf ? gguf_out_type(options.gguf_type) : GgufOutType::kF16;
  const fs::path target = fs::absolute(out).lexically_normal();
  if (fs::exists(target) && !options.overwrite) {
    throw_error(ErrorKind::kIo, "the output exists; pass --overwrite to replace it",
                {.file = target.string()});
  }
  // GGUF embeds the base's tokenizer: check for it before merging, naming the base directory
  // rather than the staging copy that the merged weights are written to.
  if (options.format == ExportFormat::kGguf) {
    const fs::path base(source.model_dir);
    if (!fs::is_regular_file(base / "tokenizer.model") &&
        !fs::is_regular_file(base / "tokenizer.json")) {
      throw_error(ErrorKind::kIo, "no tokenizer.model or tokenizer.json",
                  {.file = source.model_dir});
    }
  }
  std::error_code ec;
  fs::create_directories(target.parent_path(), ec);
  ExportReport report;
  report.output = target.string();

  StagingGuard staged(make_staging_dir(target));
  if (options.format == ExportFormat::kAdapter) {
    write_adapter(source, staged.path());
    report.merged_modules = static_cast<int64_t>(source.adapter.tensors.size());
    publish_dir(staged, target);
    return report;
  }

  // GPTQ and QA-LoRA's exact Q4_1 re-derive the training codes from the original weights.
  const bool qalora_q4_1 = options.format == ExportFormat::kGguf &&
                           gguf_type == GgufOutType::kQ4_1 && source.qalora_group_size > 0;
  const BaseWeights mode = options.format == ExportFormat::kGptqInt4 || qalora_q4_1
                               ? BaseWeights::kOriginal
                               : options.base_weights;
  const MergedWeights weights(source, mode);
  report.base_description = weights.description();
  report.merged_modules = count_adapters(weights);
  log::info("merging ", report.merged_modules, " adapted projections into ", weights.description());

  switch (options.format) {
    case ExportFormat::kMergedBf16:
    case ExportFormat::kMergedFp16:
      write_merged_hf(weights, staged.path().string(),
                      options.format == ExportFormat::kMergedBf16 ? at::kBFloat16 : at::kHalf,
                      options.max_shard_bytes);
      publish_dir(staged, target);
      break;
    case ExportFormat::kNf4: {
      const fs::path merged = staged.path() / "merged";
      fs::create_directories(merged);
      write_merged_hf(weights, merged.string(), base_projection_dtype(weights),
                      options.max_shard_bytes);
      const fs::path quantized = staged.path() / "nf4";
      QuantConfig quant;
      quant.type = QuantType::kNF4;
      quant.blocksize = 64;
      quant.double_quant = true;
      BnbSaveOptions bnb;
      bnb.max_shard_bytes = options.max_shard_bytes;
      save_bnb_4bit_checkpoint(merged.string(), quantized.string(), quant, at::kBFloat16, bnb);
      remove_tree(merged);
      StagingGuard inner(quantized);
      publish_dir(inner, target);
      break;
    }
    case ExportFormat::kGguf: {
      write_merged_hf(weights, staged.path().string(), base_projection_dtype(weights),
                      options.max_shard_bytes);
      GgufExportOptions gguf;
      gguf.outtype = gguf_type;
      gguf.name = target.stem().string();
      Q4_1MergeStats q4_1;
      if (qalora_q4_1) {
        gguf.choose = qalora_q4_1_choice(source, weights, &q4_1);
      } else if (source.qalora_group_size > 0 && gguf_type != GgufOutType::kF32 &&
                 gguf_type != GgufOutType::kF16) {
        log::info("gguf ", options.gguf_type,
                  " re-quantizes the merged weights; --gguf-type q4_1 holds a QA-LoRA merge "
                  "exactly (the training codes, fp16 scale and offset per 32 values)");
      }
      export_gguf(staged.path().string(), target.string(), gguf);
      report.details = describe_written_gguf(target.string());
      if (qalora_q4_1) report.details = describe_q4_1(q4_1) + "\n  " + report.details;
      break;
    }
    case ExportFormat::kGptqInt4: {
      const GptqExportReport gptq =
          write_gptq_int4(weights, staged.path().string(), options.max_shard_bytes);
      report.details = gptq.summary();
      publish_dir(staged, target);
      break;
    }
    case ExportFormat::kAdapter:
      break;
  }
  return report;
}

}  // namespace qtrain
