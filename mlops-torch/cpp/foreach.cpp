// Multi-tensor (`_foreach_*`) updates, which tch does not bind: on a GPU one launch covers every
// parameter instead of one launch per parameter and operation (PyTorch's optimizers use them by
// default). Each op is the same elementwise arithmetic the per-tensor code did, in the same
// order, so results are bit-identical to it; on the CPU libtorch runs them tensor by tensor.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cstring>
#include <vector>

namespace {

std::vector<at::Tensor> list(const at::Tensor* const* ts, int64_t n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (int64_t i = 0; i < n; ++i) v.push_back(*ts[i]);
  return v;
}

// Runs `f` without autograd recording; 0, or 1 with the exception's message in `err`
// (NUL-terminated, at most `len` bytes).
template <class F>
int guarded(F&& f, char* err, int64_t len) {
  try {
    c10::NoGradGuard no_grad;
    f();
    return 0;
  } catch (const std::exception& e) {
    if (len > 0) {
      std::strncpy(err, e.what(), len - 1);
      err[len - 1] = '\0';
    }
    return 1;
  }
}

}  // namespace

// Each returns 0, or 1 with libtorch's message in `err` (see `guarded`).
extern "C" {

// One SGD step over `n` parameters with their gradients and momentum buffers:
//   d = g + p * weight_decay            (when weight_decay != 0)
//   m = m * momentum + d
//   p = p - (nesterov ? d + m * momentum : m) * lr
int mlops_sgd_step(const at::Tensor* const* params, const at::Tensor* const* grads,
                   const at::Tensor* const* bufs, int64_t n, double lr, double momentum,
                   double weight_decay, int nesterov, char* err, int64_t err_len) {
  if (n == 0) return 0;
  return guarded(
      [&] {
        auto p = list(params, n), g = list(grads, n), m = list(bufs, n);
        auto d =
            weight_decay != 0.0 ? at::_foreach_add(g, at::_foreach_mul(p, weight_decay)) : g;
        at::_foreach_mul_(m, momentum);
        at::_foreach_add_(m, d);
        auto update = nesterov ? at::_foreach_add(d, at::_foreach_mul(m, momentum)) : m;
        at::_foreach_sub_(p, at::_foreach_mul(update, lr));
      },
      err, err_len);
}

// targets[i] += (sources[i] - targets[i]) * weight, in place (libtorch's lerp).
int mlops_lerp(const at::Tensor* const* targets, const at::Tensor* const* sources, int64_t n,
               double weight, char* err, int64_t err_len) {
  if (n == 0) return 0;
  return guarded(
      [&] {
        auto t = list(targets, n);
        at::_foreach_lerp_(t, list(sources, n), weight);
      },
      err, err_len);
}

// Zeroes `n` tensors in place.
int mlops_zero(const at::Tensor* const* tensors, int64_t n, char* err, int64_t err_len) {
  if (n == 0) return 0;
  return guarded(
      [&] {
        auto t = list(tensors, n);
        at::_foreach_zero_(t);
      },
      err, err_len);
}
}
