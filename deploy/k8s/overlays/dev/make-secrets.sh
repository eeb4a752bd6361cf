#!/usr/bin/env bash
# Creates the dev overlay's `parley-secrets` with fresh random values
# (nothing secret is checked in). Run once before `kubectl apply -k`.
set -euo pipefail
ns="${1:-parley-dev}"
rand() { openssl rand -hex 32; }
pg_password="$(rand)"
# One service credential per caller; the services that only check one get
# its digest (docs/security.md#service-credentials).
declare -A credential
for caller in edge ai presence chat; do credential[$caller]="$(rand)"; done
digest() { printf 'sha256:%s' "$(printf %s "$1" | sha256sum | cut -d' ' -f1)"; }
redis_password="$(rand)"
kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$ns" create secret generic parley-secrets \
    --from-literal=edge-credential="${credential[edge]}" \
    --from-literal=ai-credential="${credential[ai]}" \
    --from-literal=presence-credential="${credential[presence]}" \
    --from-literal=chat-credential="${credential[chat]}" \
    --from-literal=edge-credential-sha256="$(digest "${credential[edge]}")" \
    --from-literal=ai-credential-sha256="$(digest "${credential[ai]}")" \
    --from-literal=presence-credential-sha256="$(digest "${credential[presence]}")" \
    --from-literal=chat-credential-sha256="$(digest "${credential[chat]}")" \
    --from-literal=bus-signing-key="$(rand)" \
    --from-literal=auth-hs256-secret="$(rand)" \
    --from-literal=postgres-password="$pg_password" \
    --from-literal=redis-password="$redis_password" \
    --from-literal=database-url="postgres://parley:${pg_password}@postgres:5432/parley" \
    --from-literal=redis-url="redis://:${redis_password}@redis:6379" \
    --dry-run=client -o yaml | kubectl apply -f -
echo "secret parley-secrets ready in namespace $ns"
