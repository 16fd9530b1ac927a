package sys

import (
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// The set read back is what was registered, and follows a change.
func TestEpollSet(t *testing.T) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	require.NoError(t, err)
	defer unix.Close(epfd)
	var p [2]int
	require.NoError(t, unix.Pipe2(p[:], unix.O_CLOEXEC))
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	require.NoError(t, unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, p[0], &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(p[0])}))
	require.NoError(t, unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, p[1], &unix.EpollEvent{Events: unix.EPOLLOUT, Fd: int32(p[1])}))

	s, err := OpenEpollSet(epfd)
	require.NoError(t, err)
	defer s.Close()
	interest := func() map[int]uint32 {
		set, err := s.Read()
		require.NoError(t, err)
		for fd, m := range set {
			require.Equal(t, uint32(unix.EPOLLERR|unix.EPOLLHUP), m&(unix.EPOLLERR|unix.EPOLLHUP), "the kernel adds them to every registration")
			set[fd] = m &^ (unix.EPOLLERR | unix.EPOLLHUP)
		}
		return set
	}
	require.Equal(t, map[int]uint32{p[0]: unix.EPOLLIN, p[1]: unix.EPOLLOUT}, interest())

	require.NoError(t, unix.EpollCtl(epfd, unix.EPOLL_CTL_DEL, p[1], nil))
	require.Equal(t, map[int]uint32{p[0]: unix.EPOLLIN}, interest())
}
