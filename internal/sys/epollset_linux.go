package sys

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// EpollSet reads an epoll instance's registrations from the kernel, for
// tests that compare what a loop really watches with what plugloop asked
// for. The instance's /proc/self/fdinfo file is opened once and re-read
// with pread, so a read needs no new descriptor (a test may have the fd
// table full).
type EpollSet struct {
	info *os.File
	buf  []byte
}

// OpenEpollSet opens the registrations of the epoll instance epfd.
func OpenEpollSet(epfd int) (*EpollSet, error) {
	f, err := os.Open(fmt.Sprintf("/proc/self/fdinfo/%d", epfd))
	if err != nil {
		return nil, err
	}
	return &EpollSet{info: f}, nil
}

// Read returns every registered fd with its event mask, from the
// "tfd: FD events: MASK data: ..." lines. The kernel shows EPOLLERR and
// EPOLLHUP in every mask, registered or not. Read is not safe for
// concurrent use.
func (s *EpollSet) Read() (map[int]uint32, error) {
	if s.buf == nil {
		s.buf = make([]byte, 16<<10)
	}
	var b []byte
	for {
		n, err := s.info.ReadAt(s.buf, 0)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		if n < len(s.buf) {
			b = s.buf[:n]
			break
		}
		s.buf = make([]byte, 2*len(s.buf))
	}
	m := map[int]uint32{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || f[0] != "tfd:" || f[2] != "events:" {
			continue
		}
		fd, err1 := strconv.Atoi(f[1])
		mask, err2 := strconv.ParseUint(f[3], 16, 32)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("epoll fdinfo line %q", line)
		}
		m[fd] = uint32(mask)
	}
	return m, nil
}

// Close closes the fdinfo file.
func (s *EpollSet) Close() error { return s.info.Close() }
