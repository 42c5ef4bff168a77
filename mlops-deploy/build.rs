fn main() {
    mlops_torch_build::link_libtorch();
}
