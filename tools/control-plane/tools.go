//go:build tools

// Package tools pins the main packages build.sh builds (kube-apiserver for the
// cluster-mode tests, kubectl for the deploy/ manifest tests) so that `go mod tidy`
// keeps every module they need in go.mod/go.sum. Built by build.sh, never imported.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
