#!/usr/bin/env bash
# check-patch.sh: the in-tree route, checked. Puts the gate into a pristine KubeVirt tree
# with apply.sh (copy gate/ to pkg/virt-controller/watch/vmi/hotplugwatchdog, apply
# patches/$KUBEVIRT_VERSION/*.patch) and checks the result.
#
# Two sources for the pristine tree:
#
#   KUBEVIRT_DIR=<a KubeVirt git repository: a checkout or a bare mirror with the tag>
#     The full check, as KubeVirt builds itself: its vendored workspace, offline.
#     A scratch clone (git clone --shared) at WORK_DIR is reset to the tag, patched, then
#       go build -mod=vendor ./cmd/virt-controller
#       go vet   -mod=vendor ./pkg/virt-controller/watch ./pkg/virt-controller/watch/vmi/...
#       go test  -mod=vendor ./pkg/virt-controller/watch ./pkg/virt-controller/watch/vmi/...
#     (SKIP_TESTS=1: no tests). pkg/virt-controller/watch is application.go's package, where
#     the patch adds the flags; vmi/... is cleanupAttachmentPods' package and the gate.
#     WORK_DIR defaults to ~/.cache/hotplug-watchdog/check-patch/kubevirt-$KUBEVIRT_VERSION and
#     is kept between runs (reset each time), so the Go build cache stays warm: the cache
#     keys on the source directory.
#
#   (no KUBEVIRT_DIR) kubevirt.io/kubevirt@$KUBEVIRT_VERSION as a module zip from the Go
#     module proxy or cache (no vendor/, no staging/) in a temp dir. Checks that the
#     patches apply and that the copied package vets and passes its tests as copied (as a
#     standalone package, with this module's dependencies). APPLY_ONLY=1 stops there: that
#     is what CI runs (scripts/test), it needs no KubeVirt checkout. Without APPLY_ONLY it
#     goes on to build virt-controller's packages with -mod=mod against the published
#     staging modules, which needs every KubeVirt dependency from the proxy (this
#     workplace's proxy refuses kubevirt.io/virt-template-* v0.2.0, see README.md).
#
# Environment:
#   KUBEVIRT_VERSION  default v1.9.0 (the git tag / module version, and the patches/ dir)
#   KUBEVIRT_DIR      see above
#   WORK_DIR          see above (KUBEVIRT_DIR mode only)
#   SKIP_TESTS=1      KUBEVIRT_DIR mode: build and vet only
#   APPLY_ONLY=1      module-zip mode: stop after the apply and the copied package's checks
#   RUN_TESTS=1       module-zip mode without APPLY_ONLY: also run the vmi package's tests
#   EXPORT_PATCH=FILE write the whole change (copied package included) as one patch to FILE
#   KEEP_TMP=1        keep the temp dir (module-zip mode)
#
# Needs bash, git, Go (>= KubeVirt's go directive; v1.9.0 says 1.26.0). Writes nothing in
# this repository. Each step prints PASS:/FAIL:; the last line is RESULT: PASS|FAIL.
set -euo pipefail

KUBEVIRT_VERSION=${KUBEVIRT_VERSION:-v1.9.0}
export KUBEVIRT_VERSION
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd) # .../contrib/kubevirt
PKG_DIR=pkg/virt-controller/watch/vmi/hotplugwatchdog
export GOFLAGS=-buildvcs=false
NICE=(nice -n 10) # the machine is shared

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

export_patch() {
	[[ -n ${EXPORT_PATCH:-} ]] || return 0
	git -C "$KV" add -A -f
	git -C "$KV" diff --cached >"$EXPORT_PATCH"
	echo "wrote the whole change to $EXPORT_PATCH ($(grep -c '^diff --git' "$EXPORT_PATCH") files)"
}

# test_summary LOG: `go test -v` output (Ginkgo suites and plain tests) -> counts.
test_summary() {
	local plain
	plain=$(sed 's/\x1b\[[0-9;]*m//g' "$1")
	{
		grep -E '^(Ran [0-9]+ of [0-9]+ Specs|SUCCESS!|FAIL!)' <<<"$plain" || true
		echo "go tests and subtests: $(grep -cE '^\s*--- PASS' <<<"$plain" || true) passed, $(grep -cE '^\s*--- FAIL' <<<"$plain" || true) failed"
		grep -E '^(ok|FAIL)[[:space:]]' <<<"$plain" || true
	} | sed 's/^/    /'
}

if [[ -n ${KUBEVIRT_DIR:-} ]]; then
	# ---------------- the full check in a vendored KubeVirt tree ----------------
	WORK_DIR=${WORK_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hotplug-watchdog/check-patch/kubevirt-$KUBEVIRT_VERSION}
	KV=$WORK_DIR
	if [[ ! -e $KV/.git ]]; then
		step "clone $KUBEVIRT_DIR" git clone -q --shared --no-checkout "$KUBEVIRT_DIR" "$KV"
	fi
	if ! git -C "$KV" rev-parse -q --verify "refs/tags/$KUBEVIRT_VERSION" >/dev/null; then
		step "fetch tag $KUBEVIRT_VERSION" git -C "$KV" fetch -q "$KUBEVIRT_DIR" "refs/tags/$KUBEVIRT_VERSION:refs/tags/$KUBEVIRT_VERSION"
	fi
	reset_tree() {
		git -C "$KV" -c advice.detachedHead=false checkout -q -f --detach "$KUBEVIRT_VERSION" &&
			git -C "$KV" clean -q -ffdx
	}
	step "reset $KV to $KUBEVIRT_VERSION" reset_tree
	[[ -f $KV/vendor/modules.txt ]] || fail "$KUBEVIRT_VERSION has no vendor/ directory"
	step "apply.sh" "$HERE/apply.sh" "$KV"
	export_patch

	cd "$KV"
	step "go build -mod=vendor ./cmd/virt-controller" \
		"${NICE[@]}" go build -mod=vendor -o "$TMP/virt-controller" ./cmd/virt-controller
	PKGS=(./pkg/virt-controller/watch ./pkg/virt-controller/watch/vmi/...)
	step "go vet -mod=vendor ${PKGS[*]}" \
		"${NICE[@]}" go vet -mod=vendor "${PKGS[@]}"
	if [[ ${SKIP_TESTS:-0} != 1 ]]; then
		log=$WORK_DIR.test.log # kept: the whole -v output of the last run
		run_tests() { "${NICE[@]}" go test -mod=vendor -count=1 -v "${PKGS[@]}" >"$log" 2>&1; }
		step_start=$SECONDS
		echo "--- go test -mod=vendor -count=1 -v ${PKGS[*]}"
		if run_tests; then
			test_summary "$log"
			pass "go test ${PKGS[*]}"
		else
			tail -n 60 "$log" >&2
			test_summary "$log" >&2
			fail "go test ${PKGS[*]} (log above, whole log in $log)"
		fi
	fi
	echo "RESULT: PASS ($((SECONDS - START))s, kubevirt $KUBEVIRT_VERSION vendored at $KV, $(go version | awk '{print $3}'))"
	exit 0
fi

# ---------------- module zip from the proxy (CI) ----------------
export GOWORK=off # KubeVirt's go.work points at ./staging, which the module zip lacks

step_start=$SECONDS
echo "--- download kubevirt.io/kubevirt@$KUBEVIRT_VERSION"
info=$(cd "$TMP" && go mod download -json "kubevirt.io/kubevirt@$KUBEVIRT_VERSION") ||
	fail "go mod download -json kubevirt.io/kubevirt@$KUBEVIRT_VERSION: $(json_field Error <<<"${info:-}")"
SRC=$(json_field Dir <<<"$info")
[[ -n $SRC && -f $SRC/go.mod ]] || fail "no Dir in go mod download output: $info"
pass "download ($SRC)"

KV=$TMP/kubevirt
step copy cp -r "$SRC" "$KV"
chmod -R u+w "$KV"
commit_pristine() {
	git -C "$KV" init -q &&
		git -C "$KV" add -A -f &&
		git -C "$KV" -c user.name=check-patch -c user.email=check-patch@localhost \
			commit -q -m "kubevirt $KUBEVIRT_VERSION (pristine module zip)"
}
step "git init + commit" commit_pristine
step "apply.sh" "$HERE/apply.sh" "$KV"
grep -q "kubevirt.io/kubevirt/$PKG_DIR\"" "$KV/pkg/virt-controller/watch/vmi/volume-hotplug.go" ||
	fail "patched volume-hotplug.go does not import the in-tree gate"
# Every path the patches and the copy touched (new files too).
changed=$(git -C "$KV" status --porcelain --untracked-files=all | sed -E 's/^.. //')
if grep -qE '^(go\.(mod|sum|work)|vendor/)' <<<"$changed"; then
	fail "the patches change go.mod/go.sum/vendor (the in-tree route must not)"
fi
mapfile -t changed_go < <(grep -E '\.go$' <<<"$changed" | sed "s|^|$KV/|")
gofmt_clean() {
	local out
	out=$(gofmt -l "${changed_go[@]}") && [[ -z $out ]] || { echo "not gofmt-ed: $out"; return 1; }
}
step "gofmt -l (${#changed_go[@]} changed or new .go files)" gofmt_clean

# The copied package on its own: same dependencies as this module (it imports nothing
# from KubeVirt), so this runs wherever `go test ./...` in this directory runs.
GC=$TMP/gatecopy
mkdir -p "$GC"
cp "$HERE/go.mod" "$HERE/go.sum" "$GC/"
cp -r "$KV/$PKG_DIR" "$GC/hotplugwatchdog"
step "go vet (copied package)" bash -c "cd '$GC' && go vet ./hotplugwatchdog"
step "go test (copied package)" bash -c "cd '$GC' && go test -count=1 ./hotplugwatchdog"
export_patch

if [[ ${APPLY_ONLY:-0} == 1 ]]; then
	echo "RESULT: PASS, patches apply and the copied gate checks out ($((SECONDS - START))s, kubevirt $KUBEVIRT_VERSION module zip; virt-controller not built: use KUBEVIRT_DIR=...)"
	exit 0
fi

# Buildable outside the monorepo: every ./staging replace -> the published module.
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
if grep -q '=> \./staging' go.mod; then fail "a ./staging replace is left in go.mod"; fi

# -mod=mod lets go fill in go.sum for the swapped-in modules (no go mod tidy).
step "go build ./cmd/virt-controller" "${NICE[@]}" go build -mod=mod -o "$TMP/virt-controller" ./cmd/virt-controller
step "go vet ./pkg/virt-controller/watch/vmi/..." "${NICE[@]}" go vet -mod=mod ./pkg/virt-controller/watch/vmi/...
if [[ ${RUN_TESTS:-0} == 1 ]]; then
	step "go test ./pkg/virt-controller/watch/vmi/..." "${NICE[@]}" go test -mod=mod -count=1 ./pkg/virt-controller/watch/vmi/...
fi

echo "RESULT: PASS ($((SECONDS - START))s, kubevirt $KUBEVIRT_VERSION module zip, $(go version | awk '{print $3}'))"
