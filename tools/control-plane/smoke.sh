#!/usr/bin/env bash
# Smoke test of the control plane built by build.sh: starts etcd + kube-apiserver on free
# loopback ports in a temp dir (test CA, admin client cert in system:masters, service-account
# keys, RBAC on), waits for /readyz, installs fixtures/kubevirt-vmi-crd.yaml through the
# apiextensions API with curl, checks that the CRD becomes Established and is served
# without a status subresource, then stops both processes and removes the temp dir.
#
# Needs: bash, openssl, curl. Binaries: $CONTROL_PLANE_DIR if set, else `build.sh`
# (which reuses its cache, or builds on first use). Exits non-zero on any failure.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CRD_FILE="$HERE/fixtures/kubevirt-vmi-crd.yaml"
CRD_NAME=virtualmachineinstances.kubevirt.io
READY_TIMEOUT="${READY_TIMEOUT:-90}"   # seconds

log() { echo "smoke: $*"; }
die() { echo "smoke: FAIL: $*" >&2; exit 1; }

for tool in openssl curl; do
  command -v "$tool" >/dev/null || die "$tool not found"
done

BIN_DIR="${CONTROL_PLANE_DIR:-$("$HERE/build.sh" | tail -n 1)}"
ETCD_BIN="$BIN_DIR/etcd"
APISERVER_BIN="$BIN_DIR/kube-apiserver"
[[ -x "$ETCD_BIN" && -x "$APISERVER_BIN" ]] || die "no etcd/kube-apiserver in $BIN_DIR"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/hotplug-watchdog-smoke.XXXXXX")"
ETCD_PID=""
APISERVER_PID=""

stop() { # stop <pid>: TERM, wait up to 10 s, then KILL
  local pid="$1" i
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  stop "$APISERVER_PID"
  stop "$ETCD_PID"
  if [[ $rc -ne 0 ]]; then
    for f in etcd.log kube-apiserver.log; do
      [[ -f "$WORK/$f" ]] && { echo "----- last lines of $f -----" >&2; tail -n 25 "$WORK/$f" >&2; }
    done
  fi
  rm -rf "$WORK"
  log "stopped etcd and kube-apiserver, removed $WORK (exit $rc)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port VAR: set VAR to a loopback port nothing listens on (and not handed out yet).
USED_PORTS=" "
free_port() {
  local p i
  for i in $(seq 1 200); do
    p=$((20000 + RANDOM % 40000))
    [[ "$USED_PORTS" == *" $p "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      USED_PORTS+="$p "
      printf -v "$1" '%s' "$p"
      return 0
    fi
  done
  die "no free loopback port found"
}

# --- PKI: test CA, serving cert, admin client cert, service-account key -----------
pki() {
  local d="$WORK/pki"
  mkdir -p "$d"
  cd "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=hotplug-watchdog-test-ca" \
    -keyout ca.key -out ca.crt 2>/dev/null
  # kube-apiserver serving certificate for 127.0.0.1 / localhost
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout apiserver.key -out apiserver.csr 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > apiserver.ext
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 \
    -extfile apiserver.ext -out apiserver.crt 2>/dev/null
  # admin client certificate: user "admin" in group system:masters
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=admin" \
    -keyout admin.key -out admin.csr 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' > admin.ext
  openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 \
    -extfile admin.ext -out admin.crt 2>/dev/null
  # service-account token signing key pair
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  cd - >/dev/null
}
pki
PKI="$WORK/pki"

# --- etcd -------------------------------------------------------------------------
free_port ETCD_CLIENT_PORT
free_port ETCD_PEER_PORT
ETCD_URL="http://127.0.0.1:$ETCD_CLIENT_PORT"
etcd_args=(
  --name=default
  --data-dir="$WORK/etcd-data"
  --listen-client-urls="$ETCD_URL"
  --advertise-client-urls="$ETCD_URL"
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT"
  --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT"
  --initial-cluster="default=http://127.0.0.1:$ETCD_PEER_PORT"
)
etcd_help="$("$ETCD_BIN" --help 2>&1 || true)"
if [[ "$etcd_help" == *--unsafe-no-fsync* ]]; then
  etcd_args+=(--unsafe-no-fsync=true)
fi
"$ETCD_BIN" "${etcd_args[@]}" >"$WORK/etcd.log" 2>&1 &
ETCD_PID=$!
log "etcd $("$ETCD_BIN" --version | sed -n 's/^etcd Version: //p') pid $ETCD_PID on $ETCD_URL"

for i in $(seq 1 100); do
  kill -0 "$ETCD_PID" 2>/dev/null || die "etcd exited early"
  curl -fsS "$ETCD_URL/health" 2>/dev/null | grep -q '"health":"true"' && break
  [[ $i -eq 100 ]] && die "etcd not healthy after 20 s"
  sleep 0.2
done

# --- kube-apiserver ---------------------------------------------------------------
free_port API_PORT
API="https://127.0.0.1:$API_PORT"
"$APISERVER_BIN" \
  --etcd-servers="$ETCD_URL" \
  --cert-dir="$WORK/apiserver-certs" \
  --tls-cert-file="$PKI/apiserver.crt" \
  --tls-private-key-file="$PKI/apiserver.key" \
  --secure-port="$API_PORT" \
  --bind-address=127.0.0.1 \
  --advertise-address=127.0.0.1 \
  --endpoint-reconciler-type=none \
  --service-cluster-ip-range=10.0.0.0/24 \
  --allow-privileged=true \
  --authorization-mode=RBAC \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$PKI/sa.pub" \
  --service-account-signing-key-file="$PKI/sa.key" \
  --client-ca-file="$PKI/ca.crt" \
  --disable-admission-plugins=ServiceAccount \
  >"$WORK/kube-apiserver.log" 2>&1 &
APISERVER_PID=$!
log "kube-apiserver $("$APISERVER_BIN" --version | awk '{print $2}') pid $APISERVER_PID on $API"

# curl as the admin user, verifying the server against the test CA
kcurl() {
  curl -sS --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$@"
}

start=$SECONDS
until [[ "$(kcurl -o /dev/null -w '%{http_code}' "$API/readyz" 2>/dev/null)" == 200 ]]; do
  kill -0 "$APISERVER_PID" 2>/dev/null || die "kube-apiserver exited early"
  kill -0 "$ETCD_PID" 2>/dev/null || die "etcd exited"
  (( SECONDS - start < READY_TIMEOUT )) || die "kube-apiserver /readyz not ok after ${READY_TIMEOUT}s"
  sleep 0.5
done
log "/readyz ok after $((SECONDS - start))s"

# RBAC is real: an unauthenticated request must be rejected.
code="$(curl -sS --cacert "$PKI/ca.crt" -o /dev/null -w '%{http_code}' "$API/api/v1/namespaces")"
[[ "$code" == 401 || "$code" == 403 ]] || die "anonymous list namespaces returned $code, expected 401/403"

# --- install the KubeVirt VMI CRD -------------------------------------------------
code="$(kcurl -o "$WORK/crd-create.json" -w '%{http_code}' -X POST \
  -H 'Content-Type: application/yaml' -H 'Accept: application/json' \
  --data-binary "@$CRD_FILE" "$API/apis/apiextensions.k8s.io/v1/customresourcedefinitions")"
[[ "$code" == 201 ]] || die "creating CRD returned HTTP $code: $(cat "$WORK/crd-create.json")"
log "created customresourcedefinition $CRD_NAME"

start=$SECONDS
until kcurl "$API/apis/apiextensions.k8s.io/v1/customresourcedefinitions/$CRD_NAME" \
        | tr -d ' \n' | grep -q '"type":"Established","status":"True"'; do
  (( SECONDS - start < 30 )) || die "CRD $CRD_NAME not Established after 30s"
  sleep 0.5
done
log "customresourcedefinition $CRD_NAME is Established"

# Discovery: served at kubevirt.io/v1, and (as in KubeVirt) without a status subresource.
start=$SECONDS
# (the apiserver pretty-prints JSON for curl's User-Agent: strip the whitespace first)
until kcurl -f "$API/apis/kubevirt.io/v1" 2>/dev/null | tr -d ' \n' >"$WORK/discovery.json" \
      && grep -q '"name":"virtualmachineinstances"' "$WORK/discovery.json"; do
  (( SECONDS - start < 30 )) || die "kubevirt.io/v1 discovery has no virtualmachineinstances: $(cat "$WORK/discovery.json" 2>/dev/null)"
  sleep 0.5
done
if grep -q '"name":"virtualmachineinstances/status"' "$WORK/discovery.json"; then
  die "virtualmachineinstances has a status subresource; KubeVirt's CRD has none"
fi
grep -q '"shortNames":\["vmi","vmis"\]' "$WORK/discovery.json" \
  || die "short names vmi/vmis missing from discovery"
log "kubevirt.io/v1 virtualmachineinstances served (short names vmi, vmis; no status subresource)"

log "PASS"
