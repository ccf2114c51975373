# One image for the four services, fx-venue and fxctl. Build: docker build -t fx-saga .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p krw -p trade -p usd -p tracker -p fxctl -p venue \
 && mkdir /out \
 && cp target/release/fx-krw target/release/fx-trade target/release/fx-usd \
       target/release/fx-tracker target/release/fx-venue target/release/fxctl /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
# Each service keeps its sled store here; compose mounts a volume per service.
ENV FX_DATA_DIR=/data
VOLUME /data
