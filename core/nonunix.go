//go:build !unix

package core

// plugloop needs a Unix system (Linux, macOS, the BSDs): on others this
// package is empty, so that "go build ./..." still succeeds there.
