// Links this crate's examples and tests to libtorch (rpath) when a stage that runs models is
// enabled, and passes the lib directory on to dependents' build scripts.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_MLOPS_TORCH_LIBTORCH_LIB");
    let lib = std::env::var("DEP_MLOPS_TORCH_LIBTORCH_LIB").unwrap_or_default();
    println!("cargo:libtorch_lib={lib}");
    mlops_torch_build::link_libtorch_dir(&lib);
}
