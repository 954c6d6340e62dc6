package hostcfg

import (
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// ErrBadNice reports a nice value outside -20..-1, the raised priorities ThreadNice can give.
var ErrBadNice = errors.New("nice value out of range")

// ThreadNice raises the calling goroutine's OS thread to a nice value (-20 to -1; setpriority(2)
// with PRIO_PROCESS and a thread ID acts on that thread alone on Linux). It implements
// dataplane/node's Prioritizer; raising needs CAP_SYS_NICE (or an RLIMIT_NICE that allows it).
type ThreadNice int

// Validate reports whether n is a nice value ThreadNice can raise a thread to.
func (n ThreadNice) Validate() error {
	if n < -20 || n > -1 {
		return fmt.Errorf("%w: %d, want -20 to -1", ErrBadNice, int(n))
	}
	return nil
}

// Raise locks the calling goroutine to its thread and sets the thread's nice value to n; restore
// sets it back and unlocks the goroutine. A thread is never handed back to the Go runtime's pool
// at the raised priority: when the old value cannot be set back, restore leaves the goroutine
// locked, and the runtime ends the thread with the goroutine.
func (n ThreadNice) Raise() (restore func() error, err error) {
	if err := n.Validate(); err != nil {
		return nil, err
	}
	runtime.LockOSThread()
	tid := unix.Gettid()
	// The system call returns 20 - nice, so that no valid value looks like an error
	// (getpriority(2), C library/kernel differences).
	raw, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("hostcfg: getpriority of thread %d: %w", tid, err)
	}
	old := 20 - raw
	if old <= int(n) {
		// Already at least this high (the operator started l2lb with nice -n, say): nothing
		// to raise, nothing to pin.
		runtime.UnlockOSThread()
		return func() error { return nil }, nil
	}
	if err := unix.Setpriority(unix.PRIO_PROCESS, tid, int(n)); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("hostcfg: nice %d for thread %d: %w", int(n), tid, err)
	}
	return func() error {
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, old); err != nil {
			return fmt.Errorf("hostcfg: nice %d back for thread %d: %w", old, tid, err)
		}
		runtime.UnlockOSThread()
		return nil
	}, nil
}

// ThreadNiceOf returns the nice value of the calling goroutine's current thread, for tests and
// the status; the answer is only stable while the goroutine is locked to its thread.
func ThreadNiceOf() (int, error) {
	raw, err := unix.Getpriority(unix.PRIO_PROCESS, unix.Gettid())
	if err != nil {
		return 0, fmt.Errorf("hostcfg: getpriority: %w", err)
	}
	return 20 - raw, nil
}
