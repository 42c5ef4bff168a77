# syntax=docker/dockerfile:1
# One image per pipeline stage (data, validate, train, embed, index, eval, deploy), each the
# stage's bundle on Debian slim. The build context is not the repository but a directory of
# prebuilt bundles, `bundles/<stage>/` (the binary and the shared libraries it loads, search
# paths rewritten to $ORIGIN) and `bundles/torch/` (the libtorch libraries train, embed and
# deploy share, one layer for the three). `cargo xtask images` lays it out and builds every
# target with podman here; CI builds the same targets with docker:
#   cargo xtask images --context-only ctx      (on Debian bookworm: the runtime's glibc)
#   docker build --target train -t ghcr.io/OWNER/mlops-train:TAG -f Dockerfile ctx
# BASE: `cargo xtask images` passes a debian:bookworm-slim it made with debootstrap, since no
# container registry is reachable from our machines.
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS runtime
# Nothing comes from apt: a bundle carries the libraries its binary loads, and the binaries
# that draw charts carry their font.
RUN useradd --system --uid 10001 --create-home mlops
USER 10001
WORKDIR /home/mlops
# Kubeflow's container spec names the binary as the command.
ENV PATH="/opt/mlops/bin:${PATH}"

FROM runtime AS torch
COPY bundles/torch/ /opt/mlops/

FROM runtime AS data
COPY bundles/data/ /opt/mlops/
ENTRYPOINT ["/opt/mlops/bin/mlops-data"]

FROM runtime AS validate
COPY bundles/validate/ /opt/mlops/
ENTRYPOINT ["/opt/mlops/bin/mlops-validate"]

FROM torch AS train
COPY bundles/train/ /opt/mlops/
ENTRYPOINT ["/opt/mlops/bin/mlops-train"]

FROM torch AS embed
COPY bundles/embed/ /opt/mlops/
ENTRYPOINT ["/opt/mlops/bin/mlops-embed"]

FROM runtime AS index
COPY bundles/index/ /opt/mlops/
ENTRYPOINT ["/opt/mlops/bin/mlops-index"]

FROM runtime AS eval
COPY bundles/eval/ /opt/mlops/
ENTRYPOINT ["/opt/mlops/bin/mlops-eval"]

FROM torch AS deploy
COPY bundles/deploy/ /opt/mlops/
EXPOSE 8080 8081 8082
ENTRYPOINT ["/opt/mlops/bin/mlops-deploy"]
