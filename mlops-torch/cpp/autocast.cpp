// libtorch's per-device autocast switches, which tch does not expose: tch::autocast calls the
// device-less at::autocast::set_enabled, which in libtorch 2.x addresses CUDA only.
#include <ATen/autocast_mode.h>

extern "C" {

// Turns autocast on or off for `device` (0: CPU, 1: CUDA) on the calling thread, computing in
// bfloat16. Turning it off clears the cache of casted weights, as leaving PyTorch's autocast
// context does, so the next step casts the updated fp32 master weights afresh.
int mlops_set_autocast(int device, int enabled) {
  try {
    at::DeviceType type = device == 1 ? at::kCUDA : at::kCPU;
    at::autocast::set_autocast_dtype(type, at::kBFloat16);
    at::autocast::set_autocast_enabled(type, enabled != 0);
    if (!enabled) {
      at::autocast::clear_cache();
    }
    return 0;
  } catch (...) {
    return 1;
  }
}

int mlops_autocast_enabled(int device) {
  return at::autocast::is_autocast_enabled(device == 1 ? at::kCUDA : at::kCPU) ? 1 : 0;
}
}
