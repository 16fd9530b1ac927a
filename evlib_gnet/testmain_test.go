//go:build unix

package evlib_gnet_test

import (
	"testing"

	"github.com/plugloop/plugloop/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }
