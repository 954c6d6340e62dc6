package failover

import (
	"io"
	"net"
	"net/netip"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/testbed"
)

// numStreams is the number of long-lived connections the failover scenarios run.
const numStreams = 100

// streamOptions returns the options of the streams to echo numbered from firstID: each writes
// 4 KiB every 50 ms (80 KiB/s each, 8 MiB/s in all through the balancer for numStreams); Idle
// is longer than the TCP retransmissions a 3 s outage causes (RTO 200 ms doubling, RFC 6298),
// so only a connection that is really cut fails; echo records which frontend accepted each.
func streamOptions(echo *echoServers, firstID int) e2e.StreamOptions {
	return e2e.StreamOptions{Chunk: 4 << 10, Interval: 50 * time.Millisecond, Idle: 20 * time.Second,
		Pattern: "l2lb failover stream", FirstID: firstID, FrontendOf: echo.frontendOf}
}

// sources returns both addresses of every client plus n more per client
// (192.0.2.120 on), so that the streams spread over all three frontends
// despite -p 60 sticking each client address to one.
func sources(t *testing.T, bed *testbed.Bed, n int) []e2e.Source {
	t.Helper()
	var out []e2e.Source
	next := 120
	for _, c := range bed.Clients {
		out = append(out, e2e.Source{Host: c, Addr: c.Addr})
		for _, x := range c.Extra {
			out = append(out, e2e.Source{Host: c, Addr: x})
		}
		for i := 0; i < n; i++ {
			a := netip.AddrFrom4([4]byte{192, 0, 2, byte(next)})
			next++
			if _, err := c.RunIP("addr", "add", netip.PrefixFrom(a, testbed.Subnet.Bits()).String(), "dev", "eth0", "nodad"); err != nil {
				t.Fatal(err)
			}
			out = append(out, e2e.Source{Host: c, Addr: a})
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

// startStreams opens n streams to the VIP's echo port round-robin over srcs and starts them
// streaming; each must reach a frontend.
func startStreams(t *testing.T, bed *testbed.Bed, echo *echoServers, srcs []e2e.Source, n int) *e2e.Streams {
	t.Helper()
	return startStreamsTo(t, netip.AddrPortFrom(bed.VIPs[0], echoPort), echo, srcs, n, 0)
}

// startStreamsTo is startStreams to raddr (a VIP of either family and the echo port), numbering
// the streams from firstID (their ids seed their byte patterns and name them in reports).
func startStreamsTo(t *testing.T, raddr netip.AddrPort, echo *echoServers, srcs []e2e.Source, n, firstID int) *e2e.Streams {
	t.Helper()
	return e2e.StartStreams(t, srcs, raddr, n, streamOptions(echo, firstID))
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

func startProber(t *testing.T, bed *testbed.Bed, srcs []e2e.Source) *prober {
	return startProberTo(t, netip.AddrPortFrom(bed.VIPs[0], namePort), srcs)
}

// startProberTo is startProber to raddr (a VIP of either family and the name port).
func startProberTo(t *testing.T, raddr netip.AddrPort, srcs []e2e.Source) *prober {
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
				a := attempt{src: src.Addr, start: time.Now()}
				c, err := src.Host.DialTCP(netip.AddrPortFrom(src.Addr, 0), raddr, probeTimeout)
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
