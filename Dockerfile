# Multi-stage build: compile with the full toolchain, ship a slim image that
# runs as an unprivileged user. (Not built in this repository's CI: the CI
# machine has no Docker engine.)
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && strip target/release/todoql

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/todoql --create-home todoql
COPY --from=build /src/target/release/todoql /usr/local/bin/todoql
USER todoql
WORKDIR /var/lib/todoql
ENV LISTEN_ADDR=0.0.0.0:8000 \
    DATABASE_URL=sqlite:///var/lib/todoql/todoql.db \
    LOG_FORMAT=json
VOLUME ["/var/lib/todoql"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=2s CMD ["/bin/sh", "-c", "exec 3<>/dev/tcp/127.0.0.1/8000"]
ENTRYPOINT ["/usr/local/bin/todoql"]
CMD ["serve"]
