package e2e

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/testbed"
)

// StreamOptions says how StartStreams runs its long-lived connections. Chunk, Interval and Idle
// have no default: each suite sizes them for what it checks (how much a takeover must carry, how
// soon a rescheduled flow must meet its reset), and says why next to its values.
type StreamOptions struct {
	// Chunk is how many bytes a stream writes each Interval.
	Chunk int
	// Interval is the time between two writes of a stream; a flow moved to a frontend that
	// does not know it is reset at the next write, so it bounds how late a move shows.
	Interval time.Duration
	// Idle bounds any one read or write: longer than the TCP retransmissions the outages the
	// test provokes cause, so that only a connection that is really cut fails.
	Idle time.Duration
	// Pattern completes the seed of each stream's bytes: ChaCha8 keyed by the stream's id (8
	// bytes, little endian) followed by Pattern. Being deterministic, the reader regenerates
	// what the writer sent instead of keeping a copy.
	Pattern string
	// FirstID numbers the streams from FirstID on: the ids seed their patterns and name them in
	// reports, so two sets in one test (one per address family) stay apart.
	FirstID int
	// FrontendOf, when set, names the frontend that accepted the connection from a local
	// address ("" while none has): the echo servers record it on their side. When nil, the
	// server must send its name and a newline before echoing (realservers.Echo with a banner).
	FrontendOf func(local netip.AddrPort) string
}

// Stream is one long-lived connection through the VIP that writes a deterministic byte pattern
// and checks every byte echoed back. Its reader and writer goroutines only record a failure
// (the first one, with its time); the test reads it with Failure.
type Stream struct {
	// ID numbers the stream in its set (from StreamOptions.FirstID); it seeds the pattern.
	ID int
	// Src is the client address the stream connects from.
	Src Source
	// Local is the stream's client address and port.
	Local netip.AddrPort
	// Frontend names the frontend that accepted the connection.
	Frontend string

	o     *StreamOptions
	c     net.Conn
	r     io.Reader // c, or the reader that consumed the banner
	wdone chan struct{}
	rdone chan struct{}

	sent, recvd atomic.Int64
	lastRecv    atomic.Int64 // unix nanoseconds of the last byte received
	stopWrite   atomic.Bool

	mu  sync.Mutex
	err error
	at  time.Time // when err happened
}

// fail records err unless the stream already failed: the first failure is the cause, what
// follows (the other direction noticing) is its consequence.
func (s *Stream) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err, s.at = err, time.Now()
	}
}

// Failure returns why and when the stream failed (nil if it has not).
func (s *Stream) Failure() (error, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err, s.at
}

// WasReset reports whether the stream failed with a TCP reset: ECONNRESET when reading, EPIPE
// when writing after the reset arrived.
func (s *Stream) WasReset() bool {
	err, _ := s.Failure()
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// LastRecv returns when the stream last received a byte (the banner counts); the Unix epoch if
// it never has.
func (s *Stream) LastRecv() time.Time { return time.Unix(0, s.lastRecv.Load()) }

// pattern returns a stream's byte generator: ChaCha8 seeded by its id and the options'
// Pattern. The writer and the reader each run their own, so the reader needs no copy of what
// was sent.
func pattern(id int, name string) *rand.ChaCha8 {
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], uint64(id))
	copy(seed[8:], name)
	return rand.NewChaCha8(seed)
}

// write sends Chunk bytes of the pattern every Interval until stopWrite or an error.
func (s *Stream) write() {
	defer close(s.wdone)
	gen := pattern(s.ID, s.o.Pattern)
	buf := make([]byte, s.o.Chunk)
	tick := time.NewTicker(s.o.Interval)
	defer tick.Stop()
	for range tick.C {
		if s.stopWrite.Load() {
			return
		}
		gen.Read(buf)
		s.c.SetWriteDeadline(time.Now().Add(s.o.Idle))
		n, err := s.c.Write(buf)
		s.sent.Add(int64(n))
		if err != nil {
			s.fail(fmt.Errorf("write: %w", err))
			return
		}
	}
}

// read checks every echoed byte against the pattern until the connection is closed (by the
// test: not a failure) or fails.
func (s *Stream) read() {
	defer close(s.rdone)
	gen := pattern(s.ID, s.o.Pattern)
	buf := make([]byte, 64<<10)
	want := make([]byte, len(buf))
	for {
		s.c.SetReadDeadline(time.Now().Add(s.o.Idle))
		n, err := s.r.Read(buf)
		if n > 0 {
			gen.Read(want[:n])
			for i := 0; i < n; i++ {
				if buf[i] != want[i] {
					s.fail(fmt.Errorf("byte %d echoed as %#x, want %#x", s.recvd.Load()+int64(i), buf[i], want[i]))
					return
				}
			}
			s.recvd.Add(int64(n))
			s.lastRecv.Store(time.Now().UnixNano())
		}
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.fail(fmt.Errorf("read: %w", err))
			}
			return
		}
	}
}

// Streams is a set of long-lived connections started together by StartStreams.
type Streams struct {
	// All are the streams in the order they were opened.
	All []*Stream

	t testing.TB
	o StreamOptions
}

// Timeouts while a set starts. streamDial bounds one connection, and then its banner: through a
// working VIP each takes a round trip, and 3 s still allows for a lost SYN (retransmitted after
// 1 s, RFC 6298). streamAccepted bounds the wait for every stream's frontend from
// StreamOptions.FrontendOf: the servers record a connection when they accept it, a little after
// the client's connect returned.
const (
	streamDial     = 3 * time.Second
	streamAccepted = 5 * time.Second
)

// StartStreams opens n connections to raddr round-robin over srcs, learns each one's frontend
// (from o.FrontendOf or the server's banner) and starts them streaming; the test fails if one
// cannot connect or reaches no frontend. They are stopped and closed when the test ends.
func StartStreams(t testing.TB, srcs []Source, raddr netip.AddrPort, n int, o StreamOptions) *Streams {
	t.Helper()
	if o.Chunk <= 0 || o.Interval <= 0 || o.Idle <= 0 {
		t.Fatalf("StartStreams: Chunk, Interval and Idle must be set: %+v", o)
	}
	ss := &Streams{t: t, o: o}
	// Registered first, so that the streams started before a failure below are stopped too.
	t.Cleanup(func() {
		for _, s := range ss.All {
			s.stopWrite.Store(true)
			s.c.Close()
		}
		for _, s := range ss.All {
			<-s.wdone
			<-s.rdone
		}
	})
	for i := o.FirstID; i < o.FirstID+n; i++ {
		src := srcs[(i-o.FirstID)%len(srcs)]
		c, err := src.Host.DialTCP(netip.AddrPortFrom(src.Addr, 0), raddr, streamDial)
		if err != nil {
			t.Fatalf("stream %d from %v: %v", i, src, err)
		}
		s := &Stream{ID: i, Src: src, Local: c.LocalAddr().(*net.TCPAddr).AddrPort(), o: &ss.o, c: c, r: c,
			wdone: make(chan struct{}), rdone: make(chan struct{})}
		if o.FrontendOf == nil {
			br := bufio.NewReader(c)
			c.SetReadDeadline(time.Now().Add(streamDial))
			banner, err := br.ReadString('\n')
			if err != nil {
				c.Close()
				t.Fatalf("stream %d from %v: banner: %v", i, src, err)
			}
			s.Frontend, s.r = strings.TrimSpace(banner), br
			s.lastRecv.Store(time.Now().UnixNano())
		}
		ss.All = append(ss.All, s)
		go s.read()
		go s.write()
	}
	if o.FrontendOf != nil {
		deadline := time.Now().Add(streamAccepted)
		for _, s := range ss.All {
			for s.Frontend = o.FrontendOf(s.Local); s.Frontend == ""; s.Frontend = o.FrontendOf(s.Local) {
				if time.Now().After(deadline) {
					t.Fatalf("stream %d (%v) was accepted by no frontend", s.ID, s.Local)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
	t.Logf("%d streams to %v per frontend: %v", n, raddr, ss.PerFrontend(AllStreams))
	return ss
}

// AllStreams selects every stream (for PerFrontend, Flowing and Report).
func AllStreams(*Stream) bool { return true }

// OnHost selects the streams the frontend h accepted.
func OnHost(h *testbed.Host) func(*Stream) bool {
	return func(s *Stream) bool { return s.Frontend == h.Name }
}

// NotOnHost selects the streams frontends other than h accepted.
func NotOnHost(h *testbed.Host) func(*Stream) bool {
	return func(s *Stream) bool { return s.Frontend != h.Name }
}

// PerFrontend counts the streams keep selects by frontend.
func (ss *Streams) PerFrontend(keep func(*Stream) bool) map[string]int {
	m := map[string]int{}
	for _, s := range ss.All {
		if keep(s) {
			m[s.Frontend]++
		}
	}
	return m
}

// Flowing returns, while the streams run, what is wrong with those keep selects: a failure, or
// nothing received since since.
func (ss *Streams) Flowing(keep func(*Stream) bool, since time.Time) []string {
	var bad []string
	for _, s := range ss.All {
		if !keep(s) {
			continue
		}
		if err, at := s.Failure(); err != nil {
			bad = append(bad, fmt.Sprintf("stream %d (%s, from %v) failed at %s: %v", s.ID, s.Frontend, s.Src, at.Format("15:04:05.000"), err))
		} else if last := s.LastRecv(); last.Before(since) {
			bad = append(bad, fmt.Sprintf("stream %d (%s, from %v) received nothing since %s", s.ID, s.Frontend, s.Src, last.Format("15:04:05.000")))
		}
	}
	return bad
}

// finishEcho bounds the wait, once the writers stopped, for the last bytes to come back.
const finishEcho = 10 * time.Second

// Finish stops writing, waits until every surviving stream has its last byte echoed, closes
// them and returns, per stream, nil if it streamed through with every byte intact and received
// data after since (the event the test provoked), or why not.
func (ss *Streams) Finish(since time.Time) map[*Stream]error {
	for _, s := range ss.All {
		s.stopWrite.Store(true)
	}
	for _, s := range ss.All {
		<-s.wdone
	}
	deadline := time.Now().Add(finishEcho)
	for _, s := range ss.All {
		for {
			if err, _ := s.Failure(); err != nil || s.recvd.Load() >= s.sent.Load() || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	out := map[*Stream]error{}
	for _, s := range ss.All {
		s.c.Close()
		<-s.rdone
		err, at := s.Failure()
		switch {
		case err != nil:
			out[s] = fmt.Errorf("failed %v after the event: %w", at.Sub(since).Round(time.Millisecond), err)
		case s.recvd.Load() != s.sent.Load():
			out[s] = fmt.Errorf("%d bytes sent, %d echoed back", s.sent.Load(), s.recvd.Load())
		case s.LastRecv().Before(since):
			out[s] = errors.New("received nothing after the event")
		default:
			out[s] = nil
		}
	}
	return out
}

// Report logs why each stream keep selects did not come through res (from Finish) and returns
// how many of them did (kept), how many it selects (total), how many of those were reset, and
// the bytes they had echoed and verified.
func (ss *Streams) Report(res map[*Stream]error, keep func(*Stream) bool) (kept, total, resets int, bytes int64) {
	ss.t.Helper()
	for _, s := range ss.All {
		if !keep(s) {
			continue
		}
		total++
		bytes += s.recvd.Load()
		if res[s] == nil {
			kept++
			continue
		}
		if s.WasReset() {
			resets++
		}
		ss.t.Logf("stream %d %v->%s (frontend %s): %v", s.ID, s.Local, "VIP", s.Frontend, res[s])
	}
	return
}
