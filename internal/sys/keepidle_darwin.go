package sys

import "golang.org/x/sys/unix"

// macOS names the idle time TCP_KEEPALIVE.
const keepIdle = unix.TCP_KEEPALIVE
