//go:build darwin || dragonfly || freebsd || netbsd || openbsd

package evlib_kqueue_test

import (
	"testing"

	"github.com/plugloop/plugloop/conformance"
	_ "github.com/plugloop/plugloop/evlib_kqueue"
)

func TestConformance(t *testing.T) { conformance.Run(t, "kqueue") }
