//go:build unix

package core_test

import (
	"testing"

	"github.com/plugloop/plugloop/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }
