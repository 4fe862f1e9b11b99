# gopasta build and test entry points. `make test` is what CI runs (.ci/run).
GO      ?= go
BIN     ?= ./gopasta
PKGS    := ./...
# Fuzz smoke time per target in `make test` (longer runs: make fuzz FUZZTIME=5m).
FUZZTIME ?= 10s

.PHONY: all build deps test unit lint fuzz integration bench clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/gopasta
	ln -sf gopasta pasta
	ln -sf gopasta passt

# Debian packages and Go tools the tests drive (real programs, not mocks).
deps:
	.ci/install-deps

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet $(PKGS)
	$$($(GO) env GOPATH)/bin/staticcheck $(PKGS)

unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /integration)

# Every FuzzXxx target runs for FUZZTIME on top of its seed corpus (.ci/fuzz).
fuzz:
	GO=$(GO) .ci/fuzz $(FUZZTIME)

# The full -v log goes to integration.out; the console gets the failing
# tests' output (if any), then one line per test and go test's verdict.
integration: build
	$(GO) test -count=1 -timeout 20m -v ./integration/ > integration.out 2>&1; rc=$$?; \
	if [ $$rc -ne 0 ]; then grep -E -A60 -- '^(--- FAIL|panic)' integration.out | head -600; fi; \
	grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)' integration.out; \
	exit $$rc

test: lint unit fuzz integration

bench:
	$(GO) test -run '^$$' -bench . -benchmem $$($(GO) list ./... | grep -v /integration)

clean:
	rm -f $(BIN) pasta passt integration.out
