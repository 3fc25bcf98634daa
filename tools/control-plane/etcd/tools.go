//go:build tools

// Package tools pins the etcd server main package (go.etcd.io/etcd/server/v3 is
// itself `package main`). Built by ../build.sh, never imported.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
