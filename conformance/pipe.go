//go:build unix

package conformance

import (
	"testing"

	"github.com/plugloop/plugloop/evlib"
	"golang.org/x/sys/unix"
)

// nonblockPipe returns a pipe with both ends non-blocking and
// close-on-exec (unix.Pipe2 is not on every system).
func nonblockPipe(p *[2]int) error {
	if err := unix.Pipe(p[:]); err != nil {
		return err
	}
	for _, fd := range p {
		unix.CloseOnExec(fd)
		if err := unix.SetNonblock(fd, true); err != nil {
			unix.Close(p[0])
			unix.Close(p[1])
			return err
		}
	}
	return nil
}

// needFiles skips t, saying what goes untested, unless the backend
// declares evlib.CapFiles.
func (s *suite) needFiles(t *testing.T, untested string) {
	t.Helper()
	if s.desc.Caps&evlib.CapFiles == 0 {
		t.Skipf("conformance: backend %q declares it lacks evlib.CapFiles: %s", s.name, untested)
	}
}
