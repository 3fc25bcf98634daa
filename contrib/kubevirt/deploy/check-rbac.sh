#!/usr/bin/env bash
# check-rbac.sh: virt-controller-lease-reader.yaml on a real kube-apiserver (RBAC on).
#
# Starts etcd + kube-apiserver from tools/control-plane (build.sh's cache, or
# CONTROL_PLANE_DIR) on loopback in a temp dir, then, as KubeVirt's controller
# (impersonating system:serviceaccount:kubevirt:kubevirt-controller), checks the three
# answers the patched cleanupAttachmentPods relies on:
#   - before the RBAC is applied: get lease -> 403 Forbidden (the gate's "lease unknown");
#   - after: get of an existing lease -> 200; get of a missing one -> 404 NotFound (the
#     gate's "no lease"), not 403;
#   - and nothing more: list/watch/update of leases, and get in another namespace -> 403.
# Run by hand (needs openssl and the control-plane binaries); not part of CI.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
YAML=$HERE/virt-controller-lease-reader.yaml
SA=system:serviceaccount:kubevirt:kubevirt-controller
NS=hotplug-watchdog

log() { echo "check-rbac: $*"; }
die() { echo "check-rbac: FAIL: $*" >&2; exit 1; }
command -v openssl >/dev/null || die "openssl not found"

BIN=${CONTROL_PLANE_DIR:-$("$ROOT/tools/control-plane/build.sh" | tail -n 1)}
for b in etcd kube-apiserver kubectl; do [[ -x $BIN/$b ]] || die "no $b in $BIN"; done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/check-rbac.XXXXXX")
PIDS=()
stop() { # stop PID: TERM, up to 10 s, then KILL (kube-apiserver shuts down slowly)
	kill -TERM "$1" 2>/dev/null || return 0
	for _ in $(seq 1 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.2; done
	kill -KILL "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}
cleanup() {
	local rc=$? i
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop "${PIDS[i]}"; done # apiserver, then etcd
	((rc == 0)) || tail -n 20 "$WORK"/*.log >&2 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { # a loopback port nothing listens on
	local p
	for _ in $(seq 1 200); do
		p=$((20000 + RANDOM % 40000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
	done
	die "no free port"
}

cd "$WORK"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile server.ext -out server.crt 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /O=system:masters/CN=admin -keyout admin.key -out admin.csr 2>/dev/null
printf 'extendedKeyUsage=clientAuth\n' >admin.ext
openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile admin.ext -out admin.crt 2>/dev/null
openssl genrsa -out sa.key 2048 2>/dev/null
openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null

ETCD_PORT=$(free_port) PEER_PORT=$(free_port) API_PORT=$(free_port)
"$BIN/etcd" --name=default --data-dir="$WORK/etcd" --unsafe-no-fsync=true \
	--listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
	--listen-peer-urls="http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$PEER_PORT" \
	--initial-cluster="default=http://127.0.0.1:$PEER_PORT" >etcd.log 2>&1 &
PIDS+=($!)
"$BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$ETCD_PORT" --cert-dir="$WORK/certs" \
	--tls-cert-file=server.crt --tls-private-key-file=server.key --secure-port="$API_PORT" \
	--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --endpoint-reconciler-type=none \
	--service-cluster-ip-range=10.0.0.0/24 --authorization-mode=RBAC \
	--service-account-issuer=https://kubernetes.default.svc --service-account-key-file=sa.pub \
	--service-account-signing-key-file=sa.key --client-ca-file=ca.crt \
	--disable-admission-plugins=ServiceAccount >kube-apiserver.log 2>&1 &
PIDS+=($!)

cat >kubeconfig <<EOF
apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: $WORK/ca.crt}}]
users: [{name: admin, user: {client-certificate: $WORK/admin.crt, client-key: $WORK/admin.key}}]
contexts: [{name: test, context: {cluster: test, user: admin}}]
current-context: test
EOF
export KUBECONFIG=$WORK/kubeconfig
k() { "$BIN/kubectl" "$@"; }

for i in $(seq 1 180); do
	k get --raw /readyz >/dev/null 2>&1 && break
	((i < 180)) || die "kube-apiserver not ready after 90 s"
	sleep 0.5
done
log "kube-apiserver $("$BIN/kube-apiserver" --version | awk '{print $2}') ready"

# as_controller ARGS...: kubectl as KubeVirt's controller; prints the HTTP-ish outcome.
as_controller() {
	local out
	if out=$(k --as="$SA" "$@" 2>&1); then echo ok; return; fi
	case $out in
	*Forbidden* | *forbidden*) echo forbidden ;;
	*NotFound* | *"not found"*) echo notfound ;;
	*) echo "other: $out" ;;
	esac
}
expect() { # expect WANT DESCRIPTION ARGS...
	local want=$1 what=$2 got
	shift 2
	got=$(as_controller "$@")
	[[ $got == "$want" ]] || die "$what: got $got, want $want"
	log "ok: $what -> $want"
}

k create namespace "$NS" >/dev/null
k create namespace kubevirt >/dev/null
k create namespace elsewhere >/dev/null
lease() { # lease NAMESPACE NAME
	k apply -f - >/dev/null <<EOF
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: $2, namespace: $1}
spec: {holderIdentity: node1/hotplug-watchdog-x7k2p, leaseDurationSeconds: 40, renewTime: "2026-08-01T12:00:00.000000Z"}
EOF
}
lease "$NS" hotplug-watchdog-node1
lease elsewhere hotplug-watchdog-node1

expect forbidden "before the RBAC: get lease" get lease hotplug-watchdog-node1 -n "$NS"
k apply --server-side --field-manager=check-rbac -f "$YAML" >/dev/null || die "kubectl apply --server-side $YAML"
log "applied $(basename "$YAML") (server-side)"
for i in $(seq 1 20); do # the RBAC authorizer's cache
	[[ $(as_controller get lease hotplug-watchdog-node1 -n "$NS") == ok ]] && break
	sleep 0.5
done
expect ok "get the agent's lease" get lease hotplug-watchdog-node1 -n "$NS"
expect notfound "get a lease that does not exist" get lease hotplug-watchdog-node2 -n "$NS"
expect forbidden "list leases" get leases -n "$NS"
expect forbidden "watch leases" get leases -n "$NS" --watch --request-timeout=2s
expect forbidden "update a lease" annotate lease hotplug-watchdog-node1 -n "$NS" x=y
expect forbidden "get a lease in another namespace" get lease hotplug-watchdog-node1 -n elsewhere
log PASS
