package evlib_netpoll

// Detaches tells how many times a paused stream was taken out of netpoll's
// poller in this process.
func Detaches() int64 { return detaches.Load() }
