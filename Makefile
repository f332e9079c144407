# The two commands: `make up` brings the whole stack up, `make test` runs every test.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= /var/cache/codeinterp/cargo-target
# No incremental caches: they took 12 GiB of the shared target directory, and a disk that
# fills lets the kubelet evict pods and delete the stack's images.
export CARGO_INCREMENTAL ?= 0

.PHONY: up down test bench cluster images build lint unit e2e crd deps

## up: build what is missing, start the cluster, load the images, start the operator and API
up: cluster images build
	hack/stack/up.sh

## cluster: only the single-node Kubernetes cluster
cluster:
	hack/cluster/up.sh

## down: stop everything `make up` started and clean the host
down:
	hack/cluster/down.sh

images:
	hack/images/build.sh

build:
	cargo build --release --workspace --bins

## crd: regenerate the CRDs from the Rust types, and the chart's copies of them and the seccomp profile
crd:
	cargo run -q -p codeinterp-crds --bin crdgen -- crds charts/codeinterp/crds
	cp policies/seccomp/runner.json charts/codeinterp/files/seccomp-runner.json

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	hack/lint/function-length.py operator/src apiserver/src

## deps: what the tests need on the host (Chromium, an S3 server, Ruby and PHP)
deps:
	hack/test-deps.sh

## unit: tests that need no cluster (the Python SDK's included)
unit: deps
	cargo test --workspace --exclude e2e
	hack/sdk/test.sh unit

## e2e: tests on the real cluster (brought up first), then the SDK's live tests, the MCP
## endpoint through the official MCP Python SDK, and schemathesis against the OpenAPI document
e2e: up deps
	cargo test -p e2e --no-fail-fast -- --test-threads=4
	hack/sdk/test.sh live
	hack/mcp/test.sh
	hack/schemathesis/test.sh

test: lint unit e2e

bench: up
	hack/bench/run.sh
