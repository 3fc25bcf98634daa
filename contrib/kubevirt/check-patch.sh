#!/usr/bin/env bash
# check-patch.sh: apply patches/v1.9.0/*.patch to a pristine KubeVirt v1.9.0 and build
# virt-controller against this directory's gate module.
#
# Needs: bash, git, Go (>= the version KubeVirt's go.mod asks for, or GOTOOLCHAIN=auto),
# and the Go module proxy. Works from a cold module cache (it then downloads a lot).
# Writes nothing in this repository; the work tree is a temp dir removed on exit.
#
# Environment:
#   KUBEVIRT_VERSION  default v1.9.0
#   KEEP_TMP=1        keep the temp dir (its path is printed)
#   RUN_TESTS=1       also run `go test ./pkg/virt-controller/watch/vmi/` (slow)
#   APPLY_ONLY=1      stop once the patches apply (what CI runs here: the build needs
#                     kubevirt.io/virt-template-* v0.2.0, which this workplace's proxy refuses)
set -euo pipefail

KUBEVIRT_VERSION=${KUBEVIRT_VERSION:-v1.9.0}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd) # .../contrib/kubevirt (the gate module)
PATCH_DIR=$HERE/patches/$KUBEVIRT_VERSION
GATE_MODULE=github.com/hotplug-watchdog/hotplug-watchdog/contrib/kubevirt

export GOWORK=off           # KubeVirt's go.work points at ./staging, which the module zip lacks
export GOFLAGS=-buildvcs=false
NICE=(nice -n 10)           # the machine is shared

START=$SECONDS
TMP=$(mktemp -d "${TMPDIR:-/tmp}/check-patch.XXXXXX")
cleanup() {
	if [[ ${KEEP_TMP:-0} == 1 ]]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; echo "RESULT: FAIL ($((SECONDS - START))s)" >&2; exit 1; }
pass() { echo "PASS: $* ($((SECONDS - step_start))s)"; }

# step NAME CMD...: run CMD, print PASS/FAIL with its duration.
step() {
	local name=$1; shift
	step_start=$SECONDS
	echo "--- $name: $*"
	if "$@"; then pass "$name"; else fail "$name (exit $?): $*"; fi
}

# json_field FIELD: the string value of "FIELD" in `go mod download -json` output on stdin.
json_field() { sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\{0,1\}\$/\1/p" | head -n1; }

# (a) the pristine source, from the module proxy / cache.
step_start=$SECONDS
echo "--- download kubevirt.io/kubevirt@$KUBEVIRT_VERSION"
info=$(cd "$TMP" && go mod download -json "kubevirt.io/kubevirt@$KUBEVIRT_VERSION") ||
	fail "go mod download -json kubevirt.io/kubevirt@$KUBEVIRT_VERSION: $(json_field Error <<<"${info:-}")"
SRC=$(json_field Dir <<<"$info")
[[ -n $SRC && -f $SRC/go.mod ]] || fail "no Dir in go mod download output: $info"
pass "download ($SRC)"

# (b) a writable copy, (c) committed as the pristine tree.
KV=$TMP/kubevirt
step copy cp -r "$SRC" "$KV"
chmod -R u+w "$KV"
step git-init git -C "$KV" init -q
commit_pristine() {
	git -C "$KV" add -A -f &&
		git -C "$KV" -c user.name=check-patch -c user.email=check-patch@localhost \
			commit -q -m "kubevirt $KUBEVIRT_VERSION (pristine module zip)"
}
step git-commit commit_pristine

# (d) the patches, in order.
shopt -s nullglob
patches=("$PATCH_DIR"/*.patch)
((${#patches[@]} > 0)) || fail "no patches in $PATCH_DIR"
for p in "${patches[@]}"; do
	step "apply-check $(basename "$p")" git -C "$KV" apply --check -p1 "$p"
	step "apply $(basename "$p")" git -C "$KV" apply -p1 "$p"
done
grep -q "$GATE_MODULE/gate" "$KV/pkg/virt-controller/watch/vmi/volume-hotplug.go" ||
	fail "patched volume-hotplug.go does not import the gate"
if [[ ${APPLY_ONLY:-0} == 1 ]]; then
	echo "RESULT: PASS, patches apply ($((SECONDS - START))s, kubevirt $KUBEVIRT_VERSION; build not attempted)"
	exit 0
fi

# (e) buildable outside the monorepo: every ./staging replace -> the published module.
cd "$KV"
rm -f go.work go.work.sum
staging_mods=$(sed -nE 's#^[[:space:]]*(replace[[:space:]]+)?([^[:space:]]+)([[:space:]]+v[^[:space:]]+)?[[:space:]]+=>[[:space:]]+\./staging/.*#\2#p' go.mod)
[[ -n $staging_mods ]] || fail "no ./staging replace found in go.mod"
for m in $staging_mods; do
	step_start=$SECONDS
	out=$(go mod download -json "$m@$KUBEVIRT_VERSION") ||
		fail "$m@$KUBEVIRT_VERSION is not on the module proxy: $(json_field Error <<<"$out")"
	go mod edit "-replace=$m=$m@$KUBEVIRT_VERSION"
	pass "replace $m => $m@$KUBEVIRT_VERSION"
done
step "replace gate" go mod edit "-replace=$GATE_MODULE=$HERE"
if grep -q '=> \./staging' go.mod; then fail "a ./staging replace is left in go.mod"; fi

# (f) build. -mod=mod lets go fill in go.sum for the swapped-in modules (no go mod tidy).
step "go build ./pkg/virt-controller/..." "${NICE[@]}" go build -mod=mod ./pkg/virt-controller/...

# (g) vet the patched package (also type-checks its tests).
step "go vet ./pkg/virt-controller/watch/vmi/" "${NICE[@]}" go vet -mod=mod ./pkg/virt-controller/watch/vmi/

if [[ ${RUN_TESTS:-0} == 1 ]]; then
	step "go test ./pkg/virt-controller/watch/vmi/" "${NICE[@]}" go test -mod=mod -count=1 ./pkg/virt-controller/watch/vmi/
fi

echo "RESULT: PASS ($((SECONDS - START))s, kubevirt $KUBEVIRT_VERSION, $(go version | awk '{print $3}'))"
