package sys

// OpenBSD has no per-socket keepalive parameters.
func keepaliveParams(fd, idle, interval, probes int) error { return nil }
