//go:build unix

package foreign_test

import (
	"testing"

	"github.com/plugloop/plugloop/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }
