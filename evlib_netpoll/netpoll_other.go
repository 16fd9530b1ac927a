//go:build !linux || !(amd64 || arm64 || loong64)

package evlib_netpoll

import (
	"errors"
	"runtime"

	"github.com/plugloop/plugloop/evlib"
)

func descriptor() evlib.Descriptor {
	why := "evlib_netpoll runs on Linux only: cloudwego/netpoll v0.7.2 does not build on netbsd/openbsd (no EVFILT_USER), and its kqueue poller on darwin/freebsd is untested with plugloop"
	if runtime.GOOS == "linux" {
		why = "evlib_netpoll runs on linux/amd64, arm64 and loong64 only: cloudwego/netpoll v0.7.2 does not build for linux/" + runtime.GOARCH
	}
	return evlib.Descriptor{Unavailable: errors.New(why)}
}
