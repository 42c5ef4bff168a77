// Binaries and tests linking libtorch get an rpath to it, so they run without LD_LIBRARY_PATH.
// On a CUDA libtorch, rustc's --as-needed would drop torch_cuda (nothing references it by
// symbol), and Device::Cuda would then fail at run time; keep it linked when it exists.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
