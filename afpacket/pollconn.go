package afpacket

import (
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// errConnClosed is what pollConn's methods return once close has begun;
// Socket.mapErr turns it into ErrClosed.
var errConnClosed = errors.New("afpacket: file descriptor closed")

// pollConn is a syscall.RawConn for a non-blocking socket that waits in
// poll(2) on its own thread instead of in the Go netpoller.
//
// Why not the netpoller (as packet.Conn and os.File do): Go registers every
// descriptor with its epoll instance for EPOLLIN|EPOLLOUT, edge-triggered,
// and the kernel then runs ep_poll_callback, and wakes the thread parked in
// epoll_wait, whenever the socket's wait queue is signalled. For a packet
// socket that is every received frame (sock_def_readable) and every sent
// frame once the receiver frees it (sock_wfree -> sock_def_write_space), so
// a forwarded frame cost up to two extra thread wake-ups on top of the
// worker's own; a perf profile of `l2lb bench pps` at 50 000 frames/s showed
// 9 % of the balancer's CPU in futex/epoll/scheduler paths. With poll(2) only
// a thread actually waiting is woken, and a socket nobody waits on (the
// common case for transmission) wakes nobody.
//
// An eventfd in every poll set lets close wake a blocked waiter; close then
// waits, through mu, until every operation has left before it closes the
// descriptor, so a number reused by another open is never touched.
type pollConn struct {
	fd, efd int
	closed  atomic.Bool
	// mu is held shared by each operation and exclusively by close.
	mu sync.RWMutex
	// Separate poll sets so a reader and a writer can wait at once without
	// allocating one per call.
	rfds, wfds [2]unix.PollFd
}

func newPollConn(fd int) (*pollConn, error) {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, err
	}
	c := &pollConn{fd: fd, efd: efd}
	c.rfds = [2]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(efd), Events: unix.POLLIN}}
	c.wfds = [2]unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}, {Fd: int32(efd), Events: unix.POLLIN}}
	return c, nil
}

// Control calls f with the descriptor, which stays open until f returns.
func (c *pollConn) Control(f func(fd uintptr)) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed.Load() {
		return errConnClosed
	}
	f(uintptr(c.fd))
	return nil
}

// Read calls f until it returns true, waiting for the socket to become
// readable in between.
func (c *pollConn) Read(f func(fd uintptr) bool) error { return c.wait(f, &c.rfds) }

// Write calls f until it returns true, waiting for the socket to become
// writable in between.
func (c *pollConn) Write(f func(fd uintptr) bool) error { return c.wait(f, &c.wfds) }

func (c *pollConn) wait(f func(fd uintptr) bool, fds *[2]unix.PollFd) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for {
		if c.closed.Load() {
			return errConnClosed
		}
		if f(uintptr(c.fd)) {
			return nil
		}
		// Level-triggered: a readiness that arrived between f and poll is
		// still reported. The timeout is infinite because close wakes us.
		if _, err := unix.Poll(fds[:], -1); err != nil && err != unix.EINTR {
			return err
		}
		if fds[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 && !c.closed.Load() {
			// A pending socket error (ENETDOWN when the interface goes down or away:
			// packet_notifier in net/packet/af_packet.c) keeps poll returning at once, so
			// waiting again would spin. Report it; the caller decides whether to reopen.
			if err := c.sockErr(); err != nil {
				return err
			}
		}
	}
}

// sockErr reads and clears the socket's pending error (SO_ERROR).
func (c *pollConn) sockErr() error {
	e, err := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return err
	}
	if e != 0 {
		return unix.Errno(e)
	}
	return nil
}

// close wakes every waiter, waits until no operation is using the
// descriptor and closes it. Only the first call does anything.
func (c *pollConn) close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	// The counter stays non-zero, so a waiter that polls after this write
	// still returns at once.
	_, _ = unix.Write(c.efd, one[:])
	c.mu.Lock()
	defer c.mu.Unlock()
	err := unix.Close(c.fd)
	if eerr := unix.Close(c.efd); err == nil {
		err = eerr
	}
	return err
}
