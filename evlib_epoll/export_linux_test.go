package evlib_epoll

// UseEpollWait makes every wait use epoll_wait, as on a kernel without
// epoll_pwait2, until the returned function restores the default.
func UseEpollWait() (restore func()) {
	was := noPwait2.Swap(true)
	return func() { noPwait2.Store(was) }
}
