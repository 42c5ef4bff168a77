#!/usr/bin/env bash
# Serves a registered version with real TorchServe (from our `mlops-deploy package` archive)
# and posts every test image of a pipeline run: its accuracy must equal ours in fp32.
#
#   scripts/torchserve_check.sh RUN_DIR REGISTRY [MODEL]
#
# Needs a venv with torch 2.13, torchserve, torch-model-archiver, faiss-cpu and Pillow
# (TORCH_VENV, default ~/.cache/mlops-rs/torch-venv) and Java 17. Ports 18080-18082.
set -euo pipefail
run=$(realpath "$1"); registry=$(realpath "$2"); model=${3:-fashion-mnist}
venv=${TORCH_VENV:-$HOME/.cache/mlops-rs/torch-venv}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'pkill -f "org.pytorch.serve" || true; rm -rf "$work"' EXIT
cargo build --release -q -p mlops-deploy --bin mlops-deploy --example serve_bench_prepare
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
"$target/release/examples/serve_bench_prepare" "$run" "$work/data" fp32
"$target/release/mlops-deploy" package --registry "$registry" --name "$model" --out "$work/pkg"
mkdir -p "$work/model-store" && cp "$work/pkg/$model.mar" "$work/model-store/"
sed -e 's/install_py_dep_per_model=true/install_py_dep_per_model=false/' \
    -e 's/:8080/:18080/; s/:8081/:18081/; s/:8082/:18082/' \
    "$work/pkg/config.properties" > "$work/config.properties"
echo "disable_token_authorization=true" >> "$work/config.properties"
(cd "$work" && PATH="$venv/bin:$PATH" torchserve --start --ncs --model-store model-store \
    --ts-config config.properties > ts.log 2>&1)
for _ in $(seq 60); do
    curl -sf http://127.0.0.1:18080/ping > /dev/null && break
    sleep 1
done
"$venv/bin/python" "$here/scripts/torchserve_accuracy.py" "$work/data"
