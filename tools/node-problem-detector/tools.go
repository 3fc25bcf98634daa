//go:build tools

// Package tools pins the main package build.sh builds, so that `go mod tidy` (run by
// `build.sh --pin`) keeps every module it needs in go.mod/go.sum. Never imported.
package tools

import (
	_ "k8s.io/node-problem-detector/cmd/nodeproblemdetector"
)
