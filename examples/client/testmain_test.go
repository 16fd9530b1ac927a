//go:build unix

package main

import (
	"testing"

	"github.com/plugloop/plugloop/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }
