// Package core is plugloop's state machine, libwebsockets' core in Go: it
// owns every connection — accept, reads, buffered writes, timers, rx flow
// control, forced service — and talks to an event-loop backend through the
// small contract of package evlib, so the same program runs on poll, epoll,
// kqueue, gnet's poller, cloudwego/netpoll, or inside a poll loop the
// application owns.
//
// A [Context] (lws_context) holds the protocols and one or more service
// threads. A [Thread] (lws' per-thread context, tsi) has its own backend
// instance, a table of the descriptors it watches, sorted timers and the
// pending work of forced service. A [Conn] (lws' wsi) is an accepted, adopted
// or connected socket, a UDP socket or a pipe; it belongs to one thread for
// its whole life.
//
// # Callbacks
//
// An application is a list of [Protocol]s, each a name and a [Callback]. The
// core calls it with an [Event] whose [Reason] says why: RAW_ADOPT when a
// connection arrives, RAW_RX with the bytes read, RAW_WRITEABLE when it may
// write, RAW_CLOSE exactly once, TIMER, EVENT_WAIT_CANCELLED after
// CancelService, and, for the first protocol, the poll-fd reasons
// (ADD/DEL/CHANGE_MODE_POLL_FD inside LOCK/UNLOCK_POLL) that let an
// application's own loop follow what plugloop watches. A callback that
// returns an error closes its connection at once (lws' return -1).
//
// # Writing only when writable
//
// A callback asks with [Conn.CallbackOnWritable] and writes once, with
// [Conn.Write], in the RAW_WRITEABLE that follows. What the kernel does not
// take, the core keeps and sends before the next RAW_WRITEABLE, so memory is
// bounded by what the application produces per writable callback rather
// than by an unbounded write buffer. Asking costs no system call while the
// connection is not known to be blocked.
//
// # Rx flow control
//
// [Conn.RxFlowControl](false) stops RAW_RX before the next one, even from
// inside one. Input already read is kept and, on resume, delivered first and
// in order without waiting for a network event (forced service). Read
// interest is dropped only when input arrives while paused, so a short pause
// costs no system call; from then on the kernel holds the input and TCP
// pushes back on the peer, on every backend that declares
// evlib.CapRxBackpressure.
//
// # Running
//
// [Context.Run] services every thread until the context is destroyed, thread
// 0 on the calling goroutine. [Thread.Service] is one pass
// (lws_service_tsi), for a program that loops itself. With the foreign
// backend the application's own loop drives the thread through
// [Thread.ServiceAdjustTimeout], [Thread.ServiceFD] and Service(0); see
// package foreign. The backend is chosen by [Info].EventLib, by an
// [Options] flag, or by the PLUGLOOP_EVLIB environment variable.
//
// # Goroutines
//
// A thread's state belongs to the goroutine servicing it. Loop-only methods
// (Conn's and Timer's, Listen, AdoptFD and the like) work in a callback,
// or on a goroutine that holds the thread because nobody is servicing it;
// elsewhere they return [ErrWrongGoroutine] ([ErrDestroyed] once Destroy
// was called) and change nothing. The ways in from any goroutine are
// [Thread.Post], [Context.CancelService], [Context.Attach], the *All
// methods and [Context.Destroy].
//
// # Errors
//
// Errors wrap the sentinels of this package ([ErrDestroyed], [ErrBadFD],
// [ErrFDLimit], [ErrNotWritable]...) or of package evlib, for errors.Is. An
// adoption that fails leaves the descriptor to the caller ([Context.AdoptFD]
// says when RAW_ADOPT's refusal closes it instead).
package core
