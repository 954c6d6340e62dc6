package health

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/testbed"
)

// Stream parameters: each long-lived connection writes streamChunk bytes every streamEvery, so
// a rescheduled flow meets the reset of its new frontend within streamEvery of the move.
const (
	streamChunk = 1 << 10
	streamEvery = 100 * time.Millisecond
	streamIdle  = 10 * time.Second
)

// stream is one long-lived connection to a realservers.Echo server through the VIP: it reads
// the banner (the frontend's name), then writes a deterministic byte pattern and checks every
// echoed byte.
type stream struct {
	id       int
	src      e2e.Source
	frontend string
	c        net.Conn
	br       *bufio.Reader

	lastRecv atomic.Int64 // unix nanoseconds of the last byte received
	stopped  atomic.Bool
	wdone    chan struct{}
	rdone    chan struct{}

	mu  sync.Mutex
	err error
	at  time.Time
}

func (s *stream) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err, s.at = err, time.Now()
	}
}

// failure returns why and when the stream failed (nil if it did not).
func (s *stream) failure() (error, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err, s.at
}

// reset reports whether the stream failed with a TCP reset.
func (s *stream) reset() bool {
	err, _ := s.failure()
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// pattern returns the stream's byte generator: ChaCha8 seeded by its id.
func pattern(id int) *rand.ChaCha8 {
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], uint64(id))
	copy(seed[8:], "l2lb health stream")
	return rand.NewChaCha8(seed)
}

func (s *stream) write() {
	defer close(s.wdone)
	gen := pattern(s.id)
	buf := make([]byte, streamChunk)
	tick := time.NewTicker(streamEvery)
	defer tick.Stop()
	for range tick.C {
		if s.stopped.Load() {
			return
		}
		gen.Read(buf)
		s.c.SetWriteDeadline(time.Now().Add(streamIdle))
		if _, err := s.c.Write(buf); err != nil {
			s.fail(fmt.Errorf("write: %w", err))
			return
		}
	}
}

func (s *stream) read() {
	defer close(s.rdone)
	gen := pattern(s.id)
	buf := make([]byte, 64<<10)
	want := make([]byte, len(buf))
	for {
		s.c.SetReadDeadline(time.Now().Add(streamIdle))
		n, err := s.br.Read(buf)
		if n > 0 {
			gen.Read(want[:n])
			for i := 0; i < n; i++ {
				if buf[i] != want[i] {
					s.fail(fmt.Errorf("echoed byte %#x, want %#x", buf[i], want[i]))
					return
				}
			}
			s.lastRecv.Store(time.Now().UnixNano())
		}
		if err != nil {
			if !s.stopped.Load() {
				s.fail(fmt.Errorf("read: %w", err))
			}
			return
		}
	}
}

// streams is a set of long-lived connections.
type streams struct{ all []*stream }

// startStreams opens n connections to raddr round-robin over srcs and starts them streaming;
// each learns its frontend from the echo server's banner.
func startStreams(t *testing.T, srcs []e2e.Source, raddr netip.AddrPort, n int) *streams {
	t.Helper()
	ss := &streams{}
	t.Cleanup(func() {
		for _, s := range ss.all {
			s.stopped.Store(true)
			s.c.Close()
			<-s.wdone
			<-s.rdone
		}
	})
	for i := 0; i < n; i++ {
		src := srcs[i%len(srcs)]
		c, err := src.Host.DialTCP(netip.AddrPortFrom(src.Addr, 0), raddr, 3*time.Second)
		if err != nil {
			t.Fatalf("stream %d from %v: %v", i, src, err)
		}
		s := &stream{id: i, src: src, c: c, br: bufio.NewReader(c), wdone: make(chan struct{}), rdone: make(chan struct{})}
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		banner, err := s.br.ReadString('\n')
		if err != nil {
			c.Close()
			t.Fatalf("stream %d from %v: banner: %v", i, src, err)
		}
		s.frontend = strings.TrimSpace(banner)
		s.lastRecv.Store(time.Now().UnixNano())
		ss.all = append(ss.all, s)
		go s.read()
		go s.write()
	}
	t.Logf("%d streams to %v per frontend: %v", n, raddr, ss.perFrontend())
	return ss
}

// perFrontend counts the streams by frontend.
func (ss *streams) perFrontend() map[string]int {
	m := map[string]int{}
	for _, s := range ss.all {
		m[s.frontend]++
	}
	return m
}

// flowing returns what is wrong with the streams that keep selects: a failure, or nothing
// received since since.
func (ss *streams) flowing(keep func(*stream) bool, since time.Time) []string {
	var bad []string
	for _, s := range ss.all {
		if !keep(s) {
			continue
		}
		if err, at := s.failure(); err != nil {
			bad = append(bad, fmt.Sprintf("stream %d (%s, from %v) failed at %s: %v", s.id, s.frontend, s.src, at.Format("15:04:05.000"), err))
		} else if last := time.Unix(0, s.lastRecv.Load()); last.Before(since) {
			bad = append(bad, fmt.Sprintf("stream %d (%s, from %v) received nothing since %s", s.id, s.frontend, s.src, last.Format("15:04:05.000")))
		}
	}
	return bad
}

// onHost selects the streams a frontend accepted.
func onHost(h *testbed.Host) func(*stream) bool {
	return func(s *stream) bool { return s.frontend == h.Name }
}

// notOnHost selects the streams other frontends accepted.
func notOnHost(h *testbed.Host) func(*stream) bool {
	return func(s *stream) bool { return s.frontend != h.Name }
}
