//go:build !unix

package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "plugloop needs a Unix system (Linux, macOS, the BSDs)")
	os.Exit(1)
}
