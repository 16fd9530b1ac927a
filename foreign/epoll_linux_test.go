package foreign_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/evlib"
	"github.com/plugloop/plugloop/foreign"
	"github.com/plugloop/plugloop/internal/echo"
	"github.com/plugloop/plugloop/internal/sys"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// registrations counts the fds registered in an epoll instance.
func registrations(t *testing.T, epfd int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", epfd))
	require.NoError(t, err)
	return strings.Count(string(b), "tfd:")
}

// plugloop's epoll backend attached to an epoll instance the application
// owns and waits on: the application forwards the events of fds it does not
// know, and after Destroy only its own registration is left.
func TestEpollHost(t *testing.T) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	require.NoError(t, err)
	defer unix.Close(epfd)
	var p [2]int
	require.NoError(t, unix.Pipe(p[:]))
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	require.NoError(t, unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, p[0], &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(p[0])}))

	ctx, err := core.New(core.Info{EventLib: "epoll", Foreign: []any{epfd}, Protocols: []core.Protocol{echo.Protocol("echo")}})
	require.NoError(t, err)
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "echo")
	require.NoError(t, err)
	require.Equal(t, 3, registrations(t, epfd), "the app's pipe, plugloop's wake fd and listener")
	th := ctx.Thread(0)

	done := make(chan struct{})
	got := make(chan int, 16)
	go func() {
		defer close(done)
		evs := make([]unix.EpollEvent, 64)
		for {
			n, err := unix.EpollWait(epfd, evs, sys.Msec(th.ServiceAdjustTimeout(20*time.Millisecond)))
			if err != nil && err != unix.EINTR {
				t.Error(err)
			}
			for _, e := range evs[:max(n, 0)] {
				if int(e.Fd) == p[0] {
					var b [16]byte
					m, _ := unix.Read(p[0], b[:])
					got <- m
					continue
				}
				pfd := foreign.PollFromEpoll(e)
				th.ServiceFD(&pfd)
			}
			if th.Service(0) == core.ErrDestroyed {
				return
			}
		}
	}()
	require.NoError(t, echo.Check(ln.Addr().String(), 20))
	unix.Write(p[1], []byte("app!"))
	require.Equal(t, 4, <-got, "the app's loop serves its own fd")
	require.NoError(t, th.Post(func() { ctx.Destroy() }))
	<-ctx.Done()
	<-done
	require.Equal(t, 1, registrations(t, epfd), "destroy removed every registration plugloop made")
	unix.Write(p[1], []byte("more"))
	// The application's epoll instance still works.
	n, err := unix.EpollWait(epfd, make([]unix.EpollEvent, 4), 1000)
	require.NoError(t, err)
	require.Equal(t, 1, n)
}

// A foreign epoll fd that is open but no epoll instance is refused with
// ErrForeignUnsupported, and one plugloop's fds are in already with
// ErrExist.
func TestEpollHostRefusesOtherFDs(t *testing.T) {
	var p [2]int
	require.NoError(t, unix.Pipe2(p[:], unix.O_CLOEXEC))
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	_, err := core.New(core.Info{EventLib: "epoll", Foreign: []any{p[0]}, Protocols: []core.Protocol{echo.Protocol("echo")}})
	require.ErrorIs(t, err, evlib.ErrForeignUnsupported)

	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	require.NoError(t, err)
	defer unix.Close(epfd)
	require.NoError(t, unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, p[0], &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(p[0])}))
	ctx, err := core.New(core.Info{EventLib: "epoll", Foreign: []any{epfd}, Protocols: []core.Protocol{echo.Protocol("echo")}})
	require.NoError(t, err)
	defer ctx.Destroy()
	_, err = ctx.AdoptFile(p[0], "")
	require.ErrorIs(t, err, evlib.ErrExist, "the application's epoll set holds the fd already")
	// The instance itself: a bad fd to watch, not a bad instance.
	_, err = ctx.AdoptFile(epfd, "")
	require.ErrorIs(t, err, evlib.ErrBadFD, "adopting the application's epoll fd")
	require.NotErrorIs(t, err, evlib.ErrForeignUnsupported, "adopting the application's epoll fd")
	require.NoError(t, unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, p[1], &unix.EpollEvent{Events: unix.EPOLLOUT, Fd: int32(p[1])}), "the instance still works")
}
