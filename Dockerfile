# homecmp's container image, for a machine that can pull base images:
#   docker build -t homecmp .   (or: podman build -t homecmp .)
#   docker run --rm -p 8443:8443 -p 8443:8443/udp -p 8444:8444 -v homecmp-data:/data homecmp
# Where no registry is reachable (as where this is developed), scripts/image
# builds the same image from scratch with buildah (tests/image.rs).

FROM rust:1-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends clang libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The checkout's .cargo/config.toml builds into /var/tmp; here, in the tree.
ENV CARGO_TARGET_DIR=/src/target
RUN cargo build --release --locked --bin homecmp

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin homecmp \
    && install -d -o homecmp -g homecmp -m 0700 /data
COPY --from=build /src/target/release/homecmp /usr/local/bin/homecmp
COPY contrib/image/homecmp.toml /etc/homecmp/homecmp.toml
USER 10001:10001
WORKDIR /data
VOLUME /data
EXPOSE 8443/tcp 8443/udp 8444/tcp
ENTRYPOINT ["/usr/local/bin/homecmp"]
CMD ["serve", "--config", "/etc/homecmp/homecmp.toml"]
