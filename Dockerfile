# syntax=docker/dockerfile:1
# Gatehouse in a small image: a static-enough binary on distroless (glibc, CA certificates, no
# shell), running as a non-root user. For an HTTP(S) forge upstream; the built-in
# `git http-backend` upstream needs git and is not in this image.
#
#   docker build --build-arg GATEHOUSE_COMMIT="$(git rev-parse --short=12 HEAD)" -t gatehouse .
#   docker run -v ./etc:/etc/gatehouse:ro -v gatehouse-state:/var/lib/gatehouse -p 8080:8080 gatehouse
#
# The build stage builds with the `dist` profile (fat LTO, stripped binary, debug info kept in
# gatehouse.debug beside it in the build stage for profiling: `docker build --target build`).

FROM rust:1.95-slim-bookworm AS build
ARG GATEHOUSE_COMMIT=unknown
ARG SOURCE_DATE_EPOCH
ENV GATEHOUSE_COMMIT=${GATEHOUSE_COMMIT} \
    CARGO_TERM_COLOR=never
WORKDIR /src
COPY . .
RUN cargo build --locked --profile dist -p gatehouse --features otlp \
    && mkdir -p /out /state \
    && objcopy --only-keep-debug target/dist/gatehouse /out/gatehouse.debug \
    && objcopy --strip-debug --strip-unneeded --add-gnu-debuglink=/out/gatehouse.debug \
        target/dist/gatehouse /out/gatehouse \
    && /out/gatehouse --version

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="gatehouse" \
      org.opencontainers.image.description="Identity-aware gateway for self-hosted Git forges" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/gatehouse /usr/bin/gatehouse
COPY --from=build --chown=65532:65532 /state /var/lib/gatehouse
# 65532 is distroless' "nonroot"; mount the config at /etc/gatehouse and the state (embedded
# store, audit log) at /var/lib/gatehouse.
USER 65532:65532
WORKDIR /var/lib/gatehouse
ENV GATEHOUSE_CONFIG=/etc/gatehouse/gatehouse.toml
EXPOSE 8080 9090
ENTRYPOINT ["/usr/bin/gatehouse"]
CMD ["serve"]
