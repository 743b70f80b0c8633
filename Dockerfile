# paygate: a multi-stage build. The runtime image holds the two binaries and nothing else, runs as a
# non-root user, and needs no writable root filesystem (use PostgreSQL; the SQLite default writes a file).

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY migrations migrations
RUN mkdir -p src/bin/paymentwall-sim benches examples \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > src/bin/paymentwall-sim/main.rs \
    && echo 'fn main() {}' > benches/streams.rs \
    && echo '' > src/lib.rs \
    && cargo build --release --locked --bin paygate --bin paymentwall-sim || true
COPY src src
RUN touch src/main.rs src/lib.rs src/bin/paymentwall-sim/main.rs && cargo build --release --locked --bin paygate --bin paymentwall-sim

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/paygate /usr/local/bin/paygate
COPY --from=build /src/target/release/paymentwall-sim /usr/local/bin/paymentwall-sim
USER 10001:10001
EXPOSE 50051 8080
ENTRYPOINT ["/usr/local/bin/paygate"]
CMD ["serve"]
