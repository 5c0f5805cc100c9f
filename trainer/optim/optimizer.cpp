#include "trainer/optim/optimizer.h"

#include "core/error.h"
#include "trainer/optim/adamw.h"
#include "trainer/optim/adamw_8bit.h"

#include <ATen/ATen.h>

#include <cmath>
#include <set>
#include <sstream>

namespace qtrain {
namespace {

void check_option(bool ok, const std::string& field, double value, const std::string& rule) {
  if (!ok) {
    std::ostringstream message;
    message << "optimizer option " << value << " is invalid: " << rule;
    throw_error(ErrorKind::kConfig, message.str(), {.field = "training." + field});
  }
}

void check_options(const AdamWOptions& o) {
  check_option(std::isfinite(o.lr) && o.lr >= 0, "lr", o.lr, "must be finite and >= 0");
  check_option(o.beta1 >= 0 && o.beta1 < 1, "beta1", o.beta1, "must be in [0, 1)");
  check_option(o.beta2 >= 0 && o.beta2 < 1, "beta2", o.beta2, "must be in [0, 1)");
  check_option(std::isfinite(o.eps) && o.eps >= 0, "eps", o.eps, "must be finite and >= 0");
  check_option(std::isfinite(o.weight_decay) && o.weight_decay >= 0, "weight_decay", o.weight_decay,
               "must be finite and >= 0");
}

}  // namespace

Optimizer::Optimizer(NamedParameters named_params, const AdamWOptions& options)
    : params_(std::move(named_params)), options_(options) {
  check_options(options_);
  std::set<std::string> seen;
  for (const auto& [name, param] : params_) {
    if (name.empty() || !seen.insert(name).second) {
      throw_error(ErrorKind::kInternal, "optimizer parameter names must be unique and non-empty",
                  {.tensor = name});
    }
    if (!param.defined() || !at::isFloatingType(param.scalar_type())) {
      throw_error(ErrorKind::kInternal, "optimizer parameter is undefined or not floating point",
                  {.tensor = name});
    }
  }
}

void Optimizer::zero_grad() {
  for (auto& [name, param] : params_) param.mutable_grad() = at::Tensor();
}

void Optimizer::set_lr(double lr) {
  check_option(std::isfinite(lr) && lr >= 0, "lr", lr, "must be finite and >= 0");
  options_.lr = lr;
}

std::unique_ptr<Optimizer> make_optimizer(const std::string& kind, NamedParameters named_params,
                                          const AdamWOptions& options) {
  if (kind == "adamw" || kind == "paged_adamw") {
    return std::make_unique<AdamW>(std::move(named_params), options, kind == "paged_adamw");
  }
  if (kind == "adamw_8bit" || kind == "paged_adamw_8bit") {
    return std::make_unique<AdamW8bit>(std::move(named_params), options,
                                       kind == "paged_adamw_8bit");
  }
  throw_error(ErrorKind::kConfig,
              "unknown optimizer '" + kind +
                  "' (expected adamw, paged_adamw, adamw_8bit or paged_adamw_8bit)",
              {.field = "training.optimizer"});
}

}  // namespace qtrain
