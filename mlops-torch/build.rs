// Publishes libtorch's lib directory to dependents (DEP_MLOPS_TORCH_LIBTORCH_LIB), records the
// linked libtorch's version from its headers, and links this crate's own tests like any other.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").unwrap_or_default();
    println!("cargo:libtorch_lib={lib}");
    let version = std::path::Path::new(&lib)
        .parent()
        .map(|prefix| mlops_torch_build::header_version(&prefix.join("include")))
        .unwrap_or_default();
    println!("cargo:rustc-env=MLOPS_LIBTORCH_VERSION={version}");
    mlops_torch_build::link_libtorch_dir(&lib);
    autocast_shim(&lib);
}

/// Compiles the small C++ shim that reaches what tch does not bind: libtorch's per-device
/// autocast switches, its multi-tensor (`_foreach_*`) ops and TorchScript's fuser switch.
fn autocast_shim(lib: &str) {
    println!("cargo:rerun-if-changed=cpp/autocast.cpp");
    println!("cargo:rerun-if-changed=cpp/foreach.cpp");
    println!("cargo:rerun-if-changed=cpp/jit.cpp");
    let prefix = std::path::Path::new(lib)
        .parent()
        .expect("DEP_TCH_LIBTORCH_LIB has a parent")
        .to_path_buf();
    let include = prefix.join("include");
    cc::Build::new()
        .cpp(true)
        .file("cpp/autocast.cpp")
        .file("cpp/foreach.cpp")
        .file("cpp/jit.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        // The PyPI wheels' libtorch uses the C++11 ABI.
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .flag_if_supported("-w")
        .compile("mlops_autocast");
}
