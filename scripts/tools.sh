#!/usr/bin/env bash
# Installs the outside tools the deployment checks use and prints where each
# one is. Every tool is cached outside the repository, one directory per
# version, and reused when present: helm is a source build that takes minutes
# on two cores, so a second run must not rebuild it.
#
#   scripts/tools.sh helm                  # prints the path of the helm binary
#   scripts/tools.sh kubernetes-validate   # ... of kubernetes-validate
#   scripts/tools.sh compose               # ... of compose-go's validator
#   scripts/tools.sh grpc-health-probe     # ... of grpc-health-probe (Kubernetes' gRPC probe)
#   scripts/tools.sh grpcurl               # ... of grpcurl (a reflection client)
#   scripts/tools.sh crds                  # ... of the KEDA and Prometheus Operator
#                                          # CRDs (one directory a line)
#   scripts/tools.sh all                   # installs all of them, prints nothing
#
# Sources, the only registries this needs (docs/operations.md):
#   helm                 go install helm.sh/helm/v3/cmd/helm (Go module proxy)
#   compose validator    go install github.com/compose-spec/compose-go/v2/cmd
#                        (the binary is called `cmd`; it prints the resolved
#                        file or the first error and exits non-zero on it)
#   grpc-health-probe    go install github.com/grpc-ecosystem/grpc-health-probe
#   grpcurl              go install github.com/fullstorydev/grpcurl/cmd/grpcurl
#                        (tests/health.rs asks the gateway with both, as a
#                        kubelet and an operator would)
#   kubernetes-validate  PyPI, into a virtualenv; ships the Kubernetes
#                        schemas, so validation works offline
#   CRDs                 the Go modules of KEDA and the Prometheus Operator
#                        (go mod download, into Go's module cache), whose
#                        trees hold their CustomResourceDefinitions: the
#                        schemas of the chart's ScaledObject, PodMonitor and
#                        ServiceMonitor, and of PrometheusRule for the alerts
#
# The cache: TIDINGS_TOOLS_DIR, default ${XDG_CACHE_HOME:-~/.cache}/tidings-tools.
set -euo pipefail

HELM_VERSION=v3.22.0
COMPOSE_GO_VERSION=v2.16.2
KUBERNETES_VALIDATE_VERSION=1.37.0
KEDA_VERSION=v2.17.0
PROMETHEUS_OPERATOR_VERSION=v0.81.0
GRPC_HEALTH_PROBE_VERSION=v0.4.62
GRPCURL_VERSION=v1.9.3

TOOLS_DIR=${TIDINGS_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tidings-tools}
PYTHON=${TIDINGS_TEST_PYTHON:-python3}

die() {
    echo "tools: $*" >&2
    exit 1
}

# go_tool <name> <package> <version> <binary name go install gives it>
go_tool() {
    local name=$1 package=$2 version=$3 built=$4
    local dir="$TOOLS_DIR/$name-$version"
    if [[ ! -x "$dir/$name" ]]; then
        command -v go >/dev/null 2>&1 ||
            die "$name $version is not cached in $dir and 'go' is not installed to build it (https://go.dev/dl/)"
        echo "tools: building $name $version from the Go module proxy (minutes, once; cached in $dir)" >&2
        mkdir -p "$dir"
        # A fresh directory per attempt: a half-built binary is never reused.
        local tmp
        tmp=$(mktemp -d "$dir/.build.XXXXXX")
        if ! GOBIN="$tmp" go install "$package@$version" >&2; then
            rm -rf "$tmp"
            die "go install $package@$version failed (see above); the Go module proxy must be reachable (GOPROXY=$(go env GOPROXY))"
        fi
        mv "$tmp/$built" "$dir/$name"
        rm -rf "$tmp"
    fi
    echo "$dir/$name"
}

helm_path() {
    go_tool helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" helm
}

compose_path() {
    go_tool compose-go github.com/compose-spec/compose-go/v2/cmd "$COMPOSE_GO_VERSION" cmd
}

grpc_health_probe_path() {
    go_tool grpc-health-probe github.com/grpc-ecosystem/grpc-health-probe "$GRPC_HEALTH_PROBE_VERSION" grpc-health-probe
}

grpcurl_path() {
    go_tool grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl "$GRPCURL_VERSION" grpcurl
}

kubernetes_validate_path() {
    local dir="$TOOLS_DIR/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
    if [[ ! -x "$dir/bin/kubernetes-validate" ]]; then
        command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; kubernetes-validate needs Python 3"
        echo "tools: installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION from PyPI into $dir" >&2
        rm -rf "$dir"
        "$PYTHON" -m venv "$dir" || die "$PYTHON -m venv $dir failed (Debian: apt-get install python3-venv)"
        if ! "$dir/bin/python" -m pip install --quiet --disable-pip-version-check \
            "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >&2; then
            rm -rf "$dir"
            die "pip install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION failed (see above); PyPI must be reachable"
        fi
    fi
    echo "$dir/bin/kubernetes-validate"
}

# The directory of a Go module's source, downloaded once into Go's module
# cache (outside the repository; `go clean -modcache` removes it).
go_module_dir() {
    local module=$1 version=$2 dir
    command -v go >/dev/null 2>&1 || die "'go' is not installed; it fetches $module $version (https://go.dev/dl/)"
    dir=$(go mod download -json "$module@$version" 2>/dev/null |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p') || true
    [[ -n "$dir" && -d "$dir" ]] ||
        die "go mod download $module@$version failed; the Go module proxy must be reachable (GOPROXY=$(go env GOPROXY))"
    echo "$dir"
}

crds_paths() {
    echo "$(go_module_dir github.com/kedacore/keda/v2 "$KEDA_VERSION")/config/crd/bases"
    echo "$(go_module_dir github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION")/example/prometheus-operator-crd"
}

case "${1:-}" in
    helm) helm_path ;;
    compose) compose_path ;;
    kubernetes-validate) kubernetes_validate_path ;;
    crds) crds_paths ;;
    grpc-health-probe) grpc_health_probe_path ;;
    grpcurl) grpcurl_path ;;
    all)
        helm_path >/dev/null
        compose_path >/dev/null
        kubernetes_validate_path >/dev/null
        crds_paths >/dev/null
        grpc_health_probe_path >/dev/null
        grpcurl_path >/dev/null
        ;;
    *) die "usage: scripts/tools.sh helm|compose|kubernetes-validate|crds|grpc-health-probe|grpcurl|all" ;;
esac
