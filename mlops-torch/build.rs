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
}
