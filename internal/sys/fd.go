package sys

import "math"

// ValidFD reports whether fd can name a descriptor at all. The kernel's
// descriptors are non-negative C ints; a larger Go int would be truncated
// by the system call to another descriptor, possibly an open one.
func ValidFD(fd int) bool { return fd >= 0 && fd <= math.MaxInt32 }
