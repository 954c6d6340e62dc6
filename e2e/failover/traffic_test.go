package failover

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/testbed"
)

// Stream parameters: 100 connections, each writing chunk bytes every
// interval (80 KiB/s each, 8 MiB/s in all through the balancer).
const (
	numStreams     = 100
	streamChunk    = 4 << 10
	streamInterval = 50 * time.Millisecond
	// streamIdle bounds any one read or write: longer than the TCP
	// retransmissions a 3 s outage causes (RTO 200 ms doubling, RFC 6298).
	streamIdle = 20 * time.Second
)

// source is one client address connections are made from.
type source struct {
	h    *testbed.Host
	addr netip.Addr
}

func (s source) String() string { return fmt.Sprintf("%s/%v", s.h.Name, s.addr) }

// sources returns both addresses of every client plus n more per client
// (192.0.2.120 on), so that the streams spread over all three frontends
// despite -p 60 sticking each client address to one.
func sources(t *testing.T, bed *testbed.Bed, n int) []source {
	t.Helper()
	var out []source
	next := 120
	for _, c := range bed.Clients {
		out = append(out, source{c, c.Addr})
		for _, x := range c.Extra {
			out = append(out, source{c, x})
		}
		for i := 0; i < n; i++ {
			a := netip.AddrFrom4([4]byte{192, 0, 2, byte(next)})
			next++
			if _, err := c.RunIP("addr", "add", netip.PrefixFrom(a, testbed.Subnet.Bits()).String(), "dev", "eth0", "nodad"); err != nil {
				t.Fatal(err)
			}
			out = append(out, source{c, a})
		}
	}
	return out
}

// echoServers run on the VIP of every frontend and echo every byte back,
// recording which frontend accepted each client address and port.
type echoServers struct {
	mu     sync.Mutex
	served map[netip.AddrPort]string
	lns    []net.Listener
	conns  map[net.Conn]bool
	wg     sync.WaitGroup
}

func startEcho(t *testing.T, bed *testbed.Bed) *echoServers {
	t.Helper()
	return startEchoOn(t, bed, bed.VIPs[0])
}

// startEchoOn is startEcho listening on each of vips (of either family) on every frontend.
func startEchoOn(t *testing.T, bed *testbed.Bed, vips ...netip.Addr) *echoServers {
	t.Helper()
	e := &echoServers{served: map[netip.AddrPort]string{}, conns: map[net.Conn]bool{}}
	for _, v := range vips {
		for _, f := range bed.Frontends {
			ln, err := f.ListenTCP(netip.AddrPortFrom(v, echoPort))
			if err != nil {
				t.Fatal(err)
			}
			e.lns = append(e.lns, ln)
			e.wg.Add(1)
			go e.accept(f.Name, ln)
		}
	}
	t.Cleanup(e.close)
	return e
}

func (e *echoServers) accept(name string, ln net.Listener) {
	defer e.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		e.mu.Lock()
		e.served[c.RemoteAddr().(*net.TCPAddr).AddrPort()] = name
		e.conns[c] = true
		e.mu.Unlock()
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			io.Copy(c, c)
			c.Close()
		}()
	}
}

func (e *echoServers) frontendOf(a netip.AddrPort) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.served[a]
}

func (e *echoServers) close() {
	e.mu.Lock()
	for _, ln := range e.lns {
		ln.Close()
	}
	for c := range e.conns {
		c.Close()
	}
	e.mu.Unlock()
	e.wg.Wait()
}

// stream is one long-lived connection writing a deterministic byte
// pattern and checking every echoed byte.
type stream struct {
	id       int
	src      source
	local    netip.AddrPort
	frontend string
	c        net.Conn

	sent, recvd atomic.Int64
	lastRecv    atomic.Int64 // unix nanoseconds of the last byte received
	stopWrite   atomic.Bool
	wdone       chan struct{}
	rdone       chan struct{}

	mu  sync.Mutex
	err error
	at  time.Time // when err happened
}

func (s *stream) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err, s.at = err, time.Now()
	}
}

func (s *stream) failure() (error, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err, s.at
}

// pattern returns the stream's byte generator: ChaCha8 seeded by its id.
func pattern(id int) *rand.ChaCha8 {
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], uint64(id))
	copy(seed[8:], "l2lb failover stream")
	return rand.NewChaCha8(seed)
}

func (s *stream) write() {
	defer close(s.wdone)
	gen := pattern(s.id)
	buf := make([]byte, streamChunk)
	tick := time.NewTicker(streamInterval)
	defer tick.Stop()
	for range tick.C {
		if s.stopWrite.Load() {
			return
		}
		gen.Read(buf)
		s.c.SetWriteDeadline(time.Now().Add(streamIdle))
		n, err := s.c.Write(buf)
		s.sent.Add(int64(n))
		if err != nil {
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
		n, err := s.c.Read(buf)
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

// reset reports whether the stream failed with a TCP reset.
func (s *stream) reset() bool {
	err, _ := s.failure()
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// streams is the set of long-lived connections.
type streams struct {
	t   *testing.T
	all []*stream
}

// startStreams opens n connections to the VIP's echo port round-robin over
// srcs and starts them streaming; each must reach a frontend.
func startStreams(t *testing.T, bed *testbed.Bed, echo *echoServers, srcs []source, n int) *streams {
	t.Helper()
	return startStreamsTo(t, netip.AddrPortFrom(bed.VIPs[0], echoPort), echo, srcs, n, 0)
}

// startStreamsTo is startStreams to raddr (a VIP of either family and the echo port), numbering
// the streams from firstID (their ids seed their byte patterns and name them in reports).
func startStreamsTo(t *testing.T, raddr netip.AddrPort, echo *echoServers, srcs []source, n, firstID int) *streams {
	t.Helper()
	ss := &streams{t: t}
	for i := firstID; i < firstID+n; i++ {
		src := srcs[(i-firstID)%len(srcs)]
		c, err := src.h.DialTCP(netip.AddrPortFrom(src.addr, 0), raddr, 3*time.Second)
		if err != nil {
			t.Fatalf("stream %d from %v: %v", i, src, err)
		}
		s := &stream{id: i, src: src, c: c, local: c.LocalAddr().(*net.TCPAddr).AddrPort(),
			wdone: make(chan struct{}), rdone: make(chan struct{})}
		ss.all = append(ss.all, s)
		go s.read()
		go s.write()
	}
	t.Cleanup(func() {
		for _, s := range ss.all {
			s.c.Close()
		}
	})
	// Learn each stream's frontend from the echo servers.
	deadline := time.Now().Add(5 * time.Second)
	for _, s := range ss.all {
		for s.frontend = echo.frontendOf(s.local); s.frontend == ""; s.frontend = echo.frontendOf(s.local) {
			if time.Now().After(deadline) {
				t.Fatalf("stream %d (%v) was accepted by no frontend", s.id, s.local)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	t.Logf("%d streams to %v per frontend: %v", n, raddr, ss.perFrontend(func(*stream) bool { return true }))
	return ss
}

func (ss *streams) perFrontend(keep func(*stream) bool) map[string]int {
	m := map[string]int{}
	for _, s := range ss.all {
		if keep(s) {
			m[s.frontend]++
		}
	}
	return m
}

// finish stops writing, waits until every surviving stream has its last
// byte echoed, closes them and returns, per stream, nil if it streamed
// through with every byte intact and progressed after since, or why not.
func (ss *streams) finish(since time.Time) map[*stream]error {
	for _, s := range ss.all {
		s.stopWrite.Store(true)
	}
	for _, s := range ss.all {
		<-s.wdone
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, s := range ss.all {
		for {
			if err, _ := s.failure(); err != nil || s.recvd.Load() >= s.sent.Load() || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	out := map[*stream]error{}
	for _, s := range ss.all {
		s.c.Close()
		<-s.rdone
		err, at := s.failure()
		switch {
		case err != nil:
			out[s] = fmt.Errorf("failed %v after the event: %w", at.Sub(since).Round(time.Millisecond), err)
		case s.recvd.Load() != s.sent.Load():
			out[s] = fmt.Errorf("%d bytes sent, %d echoed back", s.sent.Load(), s.recvd.Load())
		case time.Unix(0, s.lastRecv.Load()).Before(since):
			out[s] = errors.New("received nothing after the event")
		default:
			out[s] = nil
		}
	}
	return out
}

// report logs the outcome and returns the number of streams kept among
// those selected by keep, the number selected, and the resets.
func (ss *streams) report(res map[*stream]error, keep func(*stream) bool) (kept, total, resets int, bytes int64) {
	for _, s := range ss.all {
		if !keep(s) {
			continue
		}
		total++
		bytes += s.recvd.Load()
		if res[s] == nil {
			kept++
			continue
		}
		if s.reset() {
			resets++
		}
		ss.t.Logf("stream %d %v->%s (frontend %s): %v", s.id, s.local, "VIP", s.frontend, res[s])
	}
	return
}

// attempt is one new connection of a persistent client.
type attempt struct {
	src        netip.Addr
	start, end time.Time
	name       string
	err        error
}

// prober runs one loop per source making a NAME connection to the VIP every
// 50 ms and records every attempt.
type prober struct {
	stop chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	log  []attempt
}

// probeTimeout bounds one attempt: longer than the first SYN retransmission
// (1 s, RFC 6298 section 2), so a single lost SYN shows as a slow connection.
const probeTimeout = 1500 * time.Millisecond

func startProber(t *testing.T, bed *testbed.Bed, srcs []source) *prober {
	return startProberTo(t, netip.AddrPortFrom(bed.VIPs[0], namePort), srcs)
}

// startProberTo is startProber to raddr (a VIP of either family and the name port).
func startProberTo(t *testing.T, raddr netip.AddrPort, srcs []source) *prober {
	p := &prober{stop: make(chan struct{})}
	for _, src := range srcs {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			for {
				select {
				case <-p.stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				a := attempt{src: src.addr, start: time.Now()}
				c, err := src.h.DialTCP(netip.AddrPortFrom(src.addr, 0), raddr, probeTimeout)
				if err == nil {
					a.name, err = testbed.AskNameOver(c, probeTimeout)
					c.Close()
				}
				a.err, a.end = err, time.Now()
				p.mu.Lock()
				p.log = append(p.log, a)
				p.mu.Unlock()
			}
		}()
	}
	t.Cleanup(p.halt)
	return p
}

func (p *prober) halt() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	p.wg.Wait()
}

func (p *prober) attempts() []attempt {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := append([]attempt(nil), p.log...)
	sort.Slice(out, func(i, j int) bool { return out[i].end.Before(out[j].end) })
	return out
}

// recovery returns how long after t0 the first attempt that started at or
// after t0 succeeded.
func (p *prober) recovery(t0 time.Time) (time.Duration, bool) {
	for _, a := range p.attempts() {
		if a.err == nil && !a.start.Before(t0) {
			return a.end.Sub(t0), true
		}
	}
	return 0, false
}

// window summarises the attempts that started in [from, to): successes,
// failures (with the first error) and the longest time between two
// consecutive successful ends (starting at from).
func (p *prober) window(from, to time.Time) (ok, failed int, firstErr error, gap time.Duration) {
	last := from
	for _, a := range p.attempts() {
		if a.start.Before(from) || !a.start.Before(to) {
			continue
		}
		if a.err != nil {
			failed++
			if firstErr == nil {
				firstErr = a.err
			}
			continue
		}
		ok++
		if d := a.end.Sub(last); d > gap {
			gap = d
		}
		last = a.end
	}
	return
}

// frontends returns, per source address, the frontends that answered
// attempts started in [from, to).
func (p *prober) frontends(from, to time.Time) map[netip.Addr]map[string]int {
	out := map[netip.Addr]map[string]int{}
	for _, a := range p.attempts() {
		if a.err != nil || a.start.Before(from) || !a.start.Before(to) {
			continue
		}
		if out[a.src] == nil {
			out[a.src] = map[string]int{}
		}
		out[a.src][a.name]++
	}
	return out
}

// checkPersistence reports a source address whose attempts after the event
// went anywhere but to the single frontend it used before.
func (p *prober) checkPersistence(t *testing.T, before, after map[netip.Addr]map[string]int) {
	t.Helper()
	for a, b := range before {
		if len(b) != 1 {
			t.Errorf("-p 60: %v used several frontends before the event: %v", a, b)
			continue
		}
		var was string
		for n := range b {
			was = n
		}
		if len(after[a]) == 0 {
			t.Errorf("persistent client %v made no successful connection after the event", a)
			continue
		}
		for n, k := range after[a] {
			if n != was {
				t.Errorf("persistent client %v was on %s before the event, %d connections went to %s after it", a, was, k, n)
			}
		}
	}
	t.Logf("persistent clients' frontends before %v, after %v", before, after)
}
