package echo

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"
)

// Check dials the echo server at addr over TCP and makes rounds round
// trips with messages of varying size (up to a few KiB), checking every
// echo byte for byte. Tests of hosts and adapters use it to see that a
// server they wired up works end to end.
func Check(addr string, rounds int) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(20 * time.Second)); err != nil {
		return err
	}
	got := make([]byte, 64<<10)
	for r := range rounds {
		msg := bytes.Repeat([]byte(strconv.Itoa(r)+";"), 1+r%97*(1+r%7))
		if _, err := c.Write(msg); err != nil {
			return fmt.Errorf("%s: write: %w", addr, err)
		}
		if _, err := io.ReadFull(c, got[:len(msg)]); err != nil {
			return fmt.Errorf("%s: read: %w", addr, err)
		}
		if !bytes.Equal(got[:len(msg)], msg) {
			return fmt.Errorf("%s: round %d: echo differs", addr, r)
		}
	}
	return nil
}
