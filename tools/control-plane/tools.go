//go:build tools

// Package tools pins the kube-apiserver main package so that `go mod tidy`
// keeps every module it needs in go.mod/go.sum. Built by build.sh, never imported.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
