// TorchScript's TensorExpr fuser switch, which tch does not expose.
#include <torch/csrc/jit/passes/tensorexpr_fuser.h>

extern "C" {

// Turns the TensorExpr (NNC) fuser on or off, process-wide. The PYTORCH_TENSOREXPR environment
// variable, when set, still decides (libtorch reads it first).
void mlops_set_texpr_fuser(int enabled) {
  torch::jit::setTensorExprFuserEnabled(enabled != 0);
}
}
