#include "trainer/causal_lm_loss.h"

#include "core/error.h"
#include "data/examples.h"

#include <ATen/ATen.h>

namespace qtrain {

int64_t count_loss_tokens(const at::Tensor& labels) {
  if (labels.size(1) < 2) return 0;
  return labels.narrow(1, 1, labels.size(1) - 1).ne(kIgnoreLabel).sum().item<int64_t>();
}

at::Tensor causal_lm_loss_sum(const at::Tensor& logits, const at::Tensor& labels) {
  if (logits.dim() != 3 || labels.dim() != 2 || logits.size(0) != labels.size(0) ||
      logits.size(1) != labels.size(1)) {
    throw_error(ErrorKind::kShape, "logits must be [B, T, V] and labels [B, T]",
                {.tensor = "labels"});
  }
  const int64_t length = logits.size(1);
  if (length < 2) return at::zeros({}, logits.options().dtype(at::kFloat));
  at::Tensor predictions = logits.narrow(1, 0, length - 1).flatten(0, 1).to(at::kFloat);
  at::Tensor targets = labels.narrow(1, 1, length - 1).flatten().to(logits.device());
  return at::cross_entropy_loss(predictions, targets, {}, at::Reduction::Sum, kIgnoreLabel);
}

}  // namespace qtrain
