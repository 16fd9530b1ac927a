//go:build linux

package sys

// TCP states as TCP_INFO reports them (tcpi_state; linux/tcp_states.h).
const (
	TCPSynSent   = 2
	TCPClose     = 7
	TCPCloseWait = 8
	TCPLastAck   = 9
	TCPClosing   = 11
)
