package core

import "github.com/plugloop/plugloop/internal/goid"

// exactOwner: every loop-only call checks the calling goroutine itself,
// not only the thread's state, where that costs about a nanosecond
// (goid.Fast: amd64 and arm64) and in race-enabled builds (which pay
// goid.ID's microseconds elsewhere). Without it, a call made on another
// goroutine while the thread runs callbacks looks like one of theirs.
const exactOwner = goid.Fast || raceEnabled

func goroutineID() uint64 { return goid.Token() }
