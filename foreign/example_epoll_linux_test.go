package foreign_test

import (
	"fmt"
	"io"
	"net"
	"time"

	"github.com/plugloop/plugloop/core"
	"github.com/plugloop/plugloop/foreign"
	"golang.org/x/sys/unix"
)

// The application owns an epoll instance and waits on it; plugloop's epoll
// backend registers its fds in that instance instead of one of its own.
// The application handles the events of its own fds and offers the rest
// to ServiceFD, then runs Service(0) for forced service and timers.
func ExamplePollFromEpoll() {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer unix.Close(epfd)

	// The application's own fd: a pipe on which a client reports back.
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		fmt.Println(err)
		return
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, p[0], &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(p[0])}); err != nil {
		fmt.Println(err)
		return
	}

	// Echo, the libwebsockets way: RAW_RX keeps the bytes and asks for a
	// WRITEABLE callback, RAW_WRITEABLE writes them.
	echo := core.Protocol{
		Name: "echo",
		Callback: func(ev core.Event) error {
			switch ev.Reason {
			case core.ReasonRawRX:
				pending, _ := ev.Conn.User().([]byte)
				ev.Conn.SetUser(append(pending, ev.Data...))
				return ev.Conn.CallbackOnWritable()
			case core.ReasonRawWriteable:
				_, err := ev.Conn.Write(ev.Conn.User().([]byte))
				ev.Conn.SetUser(nil)
				return err
			}
			return nil
		},
	}
	ctx, err := core.New(core.Info{EventLib: "epoll", Foreign: []any{epfd}, Protocols: []core.Protocol{echo}})
	if err != nil {
		fmt.Println(err)
		return
	}
	ln, err := ctx.Listen("tcp", "127.0.0.1:0", "echo")
	if err != nil {
		fmt.Println(err)
		return
	}
	go func() {
		reply := make([]byte, 5)
		if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
			c.Write([]byte("hello"))
			io.ReadFull(c, reply)
			c.Close()
		}
		unix.Write(p[1], reply)
	}()

	t := ctx.Thread(0)
	events := make([]unix.EpollEvent, 64)
	for done := false; !done; {
		// Round up: a wait of 0 ms for a timer due in 0.4 ms would spin.
		wait := t.ServiceAdjustTimeout(time.Second)
		n, err := unix.EpollWait(epfd, events, int((wait+time.Millisecond-1)/time.Millisecond))
		if err != nil && err != unix.EINTR {
			fmt.Println(err)
			return
		}
		for _, e := range events[:max(n, 0)] {
			if int(e.Fd) == p[0] {
				var b [16]byte
				n, _ := unix.Read(p[0], b[:])
				fmt.Printf("the client got %q back\n", b[:max(n, 0)])
				done = true
				continue
			}
			pfd := foreign.PollFromEpoll(e)
			t.ServiceFD(&pfd)
		}
		t.Service(0)
	}
	// Destroy removes plugloop's registrations and closes only its own
	// fds: the application's epoll instance and pipe go on working.
	ctx.Destroy()
	unix.Write(p[1], []byte("!"))
	n, err := unix.EpollWait(epfd, events, 1000)
	fmt.Println(n, err, events[0].Fd == int32(p[0]))
	// Output:
	// the client got "hello" back
	// 1 <nil> true
}
