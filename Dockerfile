# fleetd image: a static fleetd on a small Debian base, run as a non-root user.
#
#   docker build --build-arg REVISION=$(git rev-parse --short=7 HEAD) \
#     -t registry.example/cellos/fleetd:0.6.0 .
#
# (the image deploy/kubernetes.yaml runs). fleetd hands each spec to
# cellos-supervisor, which this image does not hold: build your runner image
# FROM this one and add the supervisor, or copy /usr/local/bin/fleetd out of it.
# TestDockerfileBuildStage runs the build stage's commands as written here.

FROM --platform=$BUILDPLATFORM golang:1.26-bookworm AS build
ARG TARGETOS=linux
ARG TARGETARCH=amd64
ARG REVISION=unknown
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# CGO off: one static binary that runs on any base image, distroless included.
RUN CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} go build -trimpath -buildvcs=false -ldflags "-s -w -X main.revision=${REVISION}" -o bin/image/fleetd ./cmd/fleetd

FROM debian:bookworm-slim
# A fixed non-root uid, so a Kubernetes securityContext can require it
# (runAsNonRoot, runAsUser 65532).
RUN groupadd --gid 65532 fleetd && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin fleetd
COPY --from=build /src/bin/image/fleetd /usr/local/bin/fleetd
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/fleetd"]
