# fleetd: `make demo` runs it end to end on a local S3; `make test` runs every test.
GO        ?= go
PREFIX    ?= /usr/local
TOOLS     := $(CURDIR)/.tools
VERSITYGW := $(TOOLS)/bin/versitygw
VERSITYGW_VERSION := v1.8.0
# MinIO publishes no module tags: the pseudo-version of the build measured
# (internal/minio.Version). About 2 minutes and 150 MB to build, once.
MINIO     := $(TOOLS)/bin/minio
MINIO_VERSION := v0.0.0-20260212201848-7aac2a2c5b7c
# nats-server carries bucket notifications in the tests, the demo and the bench.
NATS_SERVER := $(TOOLS)/bin/nats-server
NATS_SERVER_VERSION := v2.15.3
PROMTOOL  := $(TOOLS)/bin/promtool
# promtool checks deploy/prometheus/alerts.yaml. Debian's prometheus package
# ships it: only that one binary is taken from the package (no daemon, no
# dependencies installed). Elsewhere it is built from the Go module proxy.
PROMTOOL_GO_VERSION := v0.316.0
# staticcheck: lint beyond go vet, in make test through lint.
STATICCHECK := $(TOOLS)/bin/staticcheck
STATICCHECK_VERSION := v0.8.2
REVISION  := $(shell git rev-parse --short=7 HEAD 2>/dev/null)
VERSION   := $(shell sed -n 's/^[[:space:]]*version[[:space:]]*= "\(.*\)"$$/\1/p' cmd/fleetd/main.go)
LDFLAGS   := -X main.revision=$(REVISION)
# make dist: static release binaries (no cgo: they run on any Linux, in any
# image), stripped, with the version and revision stamped.
DIST      ?= dist
DIST_PLATFORMS := linux/amd64 linux/arm64
DIST_LDFLAGS := -s -w -X main.version=$(VERSION) -X main.revision=$(REVISION)

export FLEETD_VERSITYGW := $(VERSITYGW)
export FLEETD_MINIO := $(MINIO)
export FLEETD_PROMTOOL := $(PROMTOOL)
export FLEETD_NATS_SERVER := $(NATS_SERVER)

.PHONY: build test soak sim lint demo bench install clean promtool dist

build: bin/fleetd

bin/fleetd: FORCE
	$(GO) build -ldflags "$(LDFLAGS)" -o $@ ./cmd/fleetd

$(VERSITYGW):
	GOBIN=$(TOOLS)/bin $(GO) install github.com/versity/versitygw/cmd/versitygw@$(VERSITYGW_VERSION)

$(MINIO):
	GOBIN=$(TOOLS)/bin $(GO) install github.com/minio/minio@$(MINIO_VERSION)

$(NATS_SERVER):
	GOBIN=$(TOOLS)/bin $(GO) install github.com/nats-io/nats-server/v2@$(NATS_SERVER_VERSION)

$(STATICCHECK):
	GOBIN=$(TOOLS)/bin $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

promtool: $(PROMTOOL)

$(PROMTOOL):
	mkdir -p $(TOOLS)/bin $(TOOLS)/dl
	if command -v apt-get >/dev/null; then \
	  cd $(TOOLS)/dl && rm -f prometheus_*.deb && \
	  { apt-get download prometheus 2>/dev/null || { apt-get update -qq && apt-get download prometheus; }; } && \
	  dpkg-deb --fsys-tarfile prometheus_*.deb | tar -xO ./usr/bin/promtool > $@.tmp && \
	  chmod 0755 $@.tmp && mv $@.tmp $@ && rm -f prometheus_*.deb; \
	fi; \
	test -x $@ || GOBIN=$(TOOLS)/bin $(GO) install github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_GO_VERSION)

# bench/ is a module of its own (its chart library is no dependency of the
# daemon); its smoke test keeps the harness working.
# The binary-level tests (test/e2e) run on versitygw; the claim, recovery,
# operator, fault-proxy and short soak tests run again on MinIO with
# versioning on (FLEETD_TEST_STORE: a store matrix, not a copy of the tests).
STORE_MATRIX := ^Test(Adversarial|Intent|Soak|Logs|Store|ClaimReadsBack|ClaimSettles|ClaimSlowerThanTheTTL|LateCleanup|HolderWhoseRenewalsFail|ResultIsRetriedThroughAnOutage|LeaselessClaims|RenewalAnswered412|FinishedCellIsRecordedPastDrainDeadline|StopUnderHangingS3|OutageDoesNotExhaustRetries|TTLFloor|ReplacementDuringClaim|RejectFilesOnlyTheJudgedVersion|RequeueHoldsTheLease|RecoveryIgnoresItsSpecSizeLimit|TwoAgentsRunEachSpecOnce|KilledNodeWorkIsRecovered|RecoveryTurn|OrphanedClaim|EveryOutcomeEndToEnd|CancelFilesPending|SubmitUploads|StatusInspectAndRequeue|PruneDeletesOld|PauseAcrossAgents|CutOffHost|ShortCutOff|OutageOfFiveTTLs)
test: $(VERSITYGW) $(MINIO) $(NATS_SERVER) $(PROMTOOL) lint
	$(GO) test -race -count=1 -timeout 30m ./...
	FLEETD_TEST_STORE=minio $(GO) test -race -count=1 -timeout 30m -run '$(STORE_MATRIX)' ./test/e2e/
	cd bench && $(GO) test -race -count=1 -timeout 30m ./...

# The long randomized soak of the claim protocol (4 agents, 400 specs, random S3
# faults, a 20 s outage, an agent killed -9); FLEETD_SOAK_SEED=n replays a run.
soak: $(VERSITYGW) $(MINIO)
	FLEETD_SOAK=long $(GO) test -race -count=1 -timeout 60m -run 'TestSoak$$' -v ./test/e2e/

# The long sweep of the fleet simulator (internal/sim): SIM_SEEDS scenarios
# from SIM_SEED_BASE over every core; SIM_SEED=n replays one with its trace;
# SIM_STORE=versioned (or conditional) runs them all on that kind of store.
SIM_SEEDS ?= 1000000
sim:
	SIM_SEEDS=$(SIM_SEEDS) SIM_STORE=$(SIM_STORE) $(GO) test -count=1 -timeout 0 -run 'TestSweep$$' -v ./internal/sim/ | grep -v '^\s*--- PASS\|^=== '

lint: $(STATICCHECK)
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.tools/*')); \
	  if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) vet ./...
	cd bench && $(GO) vet ./...
	$(STATICCHECK) ./...
	cd bench && $(STATICCHECK) ./...

# make demo STORE=minio runs it on MinIO (versioning on) instead of versitygw.
STORE ?= versitygw
demo: $(VERSITYGW) $(NATS_SERVER) $(if $(filter minio,$(STORE)),$(MINIO)) build
	$(GO) run ./examples/demo --fleetd bin/fleetd --supervisor examples/supervisor.sh --store $(STORE)

bench: $(VERSITYGW) $(MINIO) $(NATS_SERVER)
	cd bench && $(GO) run . $(BENCH_ARGS)

install: build
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 bin/fleetd $(DESTDIR)$(PREFIX)/bin/fleetd

dist:
	rm -rf $(DIST) && mkdir -p $(DIST)
	for p in $(DIST_PLATFORMS); do \
	  os=$${p%/*}; arch=$${p#*/}; \
	  CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -buildvcs=false -ldflags "$(DIST_LDFLAGS)" \
	    -o $(DIST)/fleetd-$(VERSION)-$$os-$$arch ./cmd/fleetd || exit 1; \
	done
	cd $(DIST) && sha256sum fleetd-* > SHA256SUMS

clean:
	rm -rf bin dist

FORCE:
