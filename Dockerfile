# syntax=docker/dockerfile:1
# One image per pipeline stage: `docker build --target <stage> -t mlops-<stage> .` with stage
# one of data, validate, train, embed, index, eval, deploy. The build stage compiles the
# workspace and lays out each binary with exactly the shared libraries it loads
# (`cargo xtask bundle`); each stage target copies its bundle onto Debian slim, which adds only
# glibc. `cargo xtask test` checks these bundles run alone and that hadolint passes this file.

FROM rust:1.95-bookworm AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake pkg-config \
        libopenblas-openmp-dev patchelf python3-pip python3-venv fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# libtorch comes from PyPI's torch wheel, as on any machine (`cargo xtask setup`).
RUN cargo xtask setup --skip-apt --skip-venv \
    && cargo build --release --bins \
        -p mlops-data -p mlops-validate -p mlops-train -p mlops-embed \
        -p mlops-index -p mlops-eval -p mlops-deploy \
    && for s in data validate train embed index eval deploy; do \
        cargo xtask bundle "$s" --out "/bundles/$s" --no-build; \
    done

FROM debian:bookworm-slim AS runtime
# Nothing comes from apt: a bundle carries the libraries its binary loads, and the binaries
# that draw charts carry their font.
RUN useradd --system --uid 10001 --create-home mlops
USER 10001
WORKDIR /home/mlops
# Kubeflow's container spec names the binary as the command.
ENV PATH="/opt/mlops/bin:${PATH}"

FROM runtime AS data
COPY --from=build /bundles/data/ /opt/mlops/
ENTRYPOINT ["/opt/mlops/bin/mlops-data"]

FROM runtime AS validate
COPY --from=build /bundles/validate/ /opt/mlops/
ENTRYPOINT ["/opt/mlops/bin/mlops-validate"]

FROM runtime AS train
COPY --from=build /bundles/train/ /opt/mlops/
ENTRYPOINT ["/opt/mlops/bin/mlops-train"]

FROM runtime AS embed
COPY --from=build /bundles/embed/ /opt/mlops/
ENTRYPOINT ["/opt/mlops/bin/mlops-embed"]

FROM runtime AS index
COPY --from=build /bundles/index/ /opt/mlops/
ENTRYPOINT ["/opt/mlops/bin/mlops-index"]

FROM runtime AS eval
COPY --from=build /bundles/eval/ /opt/mlops/
ENTRYPOINT ["/opt/mlops/bin/mlops-eval"]

FROM runtime AS deploy
COPY --from=build /bundles/deploy/ /opt/mlops/
EXPOSE 8080 8081 8082
ENTRYPOINT ["/opt/mlops/bin/mlops-deploy"]
