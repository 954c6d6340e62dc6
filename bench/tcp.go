package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/l2lb/l2lb/internal/testbed"
)

// Ports of the bench's own TCP servers on the backends.
const (
	// transferPort serves bulk transfers: the client sends 'D' and reads
	// until it closes, or sends 'U', streams, half-closes and reads back the
	// 8-byte big-endian count of bytes the server received.
	transferPort = 5001
	// connPort accepts, writes one byte and closes, so the server side holds
	// TIME_WAIT and the client's ports are freed at once (RFC 9293 section
	// 3.6: the side that closes first waits).
	connPort = 5002
	// ioChunk is the read and write size of transfers.
	ioChunk = 256 << 10
)

// ErrTransfer means a TCP transfer did not complete as the protocol says.
var ErrTransfer = errors.New("bench: transfer failed")

// startServers listens on the VIP and on its own address on every backend,
// for both the transfer and the connection servers. The own addresses are
// what a proxy such as HAProxy connects to (and the first backend's is the
// direct reference).
func (e *env) startServers() error {
	type ep struct {
		h    *testbed.Host
		addr netip.Addr
	}
	var eps []ep
	for _, h := range e.backends {
		eps = append(eps, ep{h, h.Addr}, ep{h, e.vip})
	}
	for _, p := range eps {
		for _, port := range []uint16{transferPort, connPort} {
			ln, err := p.h.ListenTCP(netip.AddrPortFrom(p.addr, port))
			if err != nil {
				return err
			}
			e.mu.Lock()
			e.listeners = append(e.listeners, ln)
			e.mu.Unlock()
			go e.serve(ln, port)
		}
	}
	if err := e.udpSinks(); err != nil {
		return err
	}
	// A client port range as wide as the documentation allows, inside c1's
	// namespace, so the conn scenario cannot run out of ephemeral ports.
	return e.client.SetSysctl("net.ipv4.ip_local_port_range", "10000 65000")
}

// serve answers the bench's TCP protocols on ln: 'D' download, 'U' upload
// (see transferPort), and 'F', a long-lived flow of the failover scenario
// whose received bytes are counted per client address in e.flowRx.
func (e *env) serve(ln *net.TCPListener, port uint16) {
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			if port == connPort {
				c.Write([]byte{'x'})
				return
			}
			var cmd [1]byte
			if _, err := io.ReadFull(c, cmd[:]); err != nil {
				return
			}
			buf := make([]byte, ioChunk)
			switch cmd[0] {
			case 'D':
				for {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			case 'U':
				n, err := io.CopyBuffer(io.Discard, c, buf)
				if err != nil {
					return
				}
				var out [8]byte
				binary.BigEndian.PutUint64(out[:], uint64(n))
				c.Write(out[:])
			case 'F':
				ctr := new(atomic.Uint64)
				e.flowRx.Store(c.RemoteAddr().(*net.TCPAddr).AddrPort(), ctr)
				for {
					k, err := c.Read(buf)
					ctr.Add(uint64(k))
					if err != nil {
						return
					}
				}
			}
		}()
	}
}

// transfer measures one download or upload to raddr for the phase duration
// and returns the goodput in bits per second.
func (e *env) transfer(ctx context.Context, raddr netip.AddrPort, upload bool) (float64, error) {
	c, err := e.client.DialTCP(netip.AddrPort{}, raddr, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	stopAt := time.Now().Add(e.opts.Duration)
	if dl, ok := ctx.Deadline(); ok && dl.Before(stopAt) {
		stopAt = dl
	}
	// Unblocks reads and writes when the context ends.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, ioChunk)
	tc := c.(*net.TCPConn)
	start := time.Now()
	if !upload {
		if _, err := c.Write([]byte{'D'}); err != nil {
			return 0, err
		}
		var n int64
		c.SetReadDeadline(stopAt.Add(5 * time.Second))
		for time.Now().Before(stopAt) {
			k, err := c.Read(buf)
			n += int64(k)
			if err != nil {
				return 0, fmt.Errorf("%w: download from %v after %d bytes: %w", ErrTransfer, raddr, n, err)
			}
		}
		return float64(n) * 8 / time.Since(start).Seconds(), nil
	}
	if _, err := c.Write([]byte{'U'}); err != nil {
		return 0, err
	}
	c.SetWriteDeadline(stopAt.Add(5 * time.Second))
	for time.Now().Before(stopAt) {
		if _, err := c.Write(buf); err != nil {
			return 0, fmt.Errorf("%w: upload to %v: %w", ErrTransfer, raddr, err)
		}
	}
	if err := tc.CloseWrite(); err != nil {
		return 0, err
	}
	// The server's count is what arrived, so data still in the client's
	// send buffer when the clock stopped is not counted as sent.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var out [8]byte
	if _, err := io.ReadFull(c, out[:]); err != nil {
		return 0, fmt.Errorf("%w: upload to %v: reading the count: %w", ErrTransfer, raddr, err)
	}
	return float64(binary.BigEndian.Uint64(out[:])) * 8 / time.Since(start).Seconds(), nil
}

// runTCP is one run of the tcp scenario: download and upload straight to
// the first backend, through HAProxy where it is installed, and through the
// VIP (l2lb with the largest configured worker count, on each fast-path
// backend in turn). Each leg runs alone: HAProxy is stopped before l2lb
// starts, so neither takes CPU from the other.
func (e *env) runTCP(ctx context.Context, sc *Scenario) error {
	w := e.opts.Workers[len(e.opts.Workers)-1]
	sc.note("offloads at their defaults, %d-byte reads/writes; via VIP = l2lb with %d worker(s) on %s, one after the other, in the reverse order on even runs (metrics of backends other than afpacket are prefixed with the backend's name); direct = to %s's own address; one stream, and %d parallel streams from one client (rates summed; through the VIP and HAProxy they spread over the backends)", ioChunk, w, strings.Join(e.opts.Backends, ", "), e.backends[0].Name, e.opts.Streams)
	if cc, err := e.backends[0].Sysctl("net.ipv4.tcp_congestion_control"); err == nil {
		sc.note("TCP congestion control in the namespaces: %s (inherited from the host)", cc)
	}
	direct := netip.AddrPortFrom(e.backends[0].Addr, transferPort)
	vip := netip.AddrPortFrom(e.vip, transferPort)
	dirs := []string{"download", "upload"}
	res := map[string]float64{}
	// measure runs one stream and, with Streams > 1, the parallel streams, in both directions,
	// and records them under name ("direct", "VIP").
	measure := func(name string, to netip.AddrPort) error {
		for _, dir := range dirs {
			e.logf("tcp: %s %s", dir, name)
			v, err := e.transfer(ctx, to, dir == "upload")
			if err != nil {
				return err
			}
			res[dir+" "+name] = v
			if n := e.opts.Streams; n > 1 {
				e.logf("tcp: %s %s, %d streams", dir, name, n)
				if v, err = e.transferN(ctx, to, dir == "upload", n); err != nil {
					return err
				}
				res[dir+" "+name+" N"] = v
			}
		}
		return nil
	}
	if err := measure("direct", direct); err != nil {
		return err
	}
	haveHAProxy := false
	if _, err := exec.LookPath("haproxy"); err != nil {
		sc.note("HAProxy comparison skipped: haproxy is not installed (Debian/Ubuntu package haproxy)")
	} else {
		e.logf("tcp: download and upload via HAProxy")
		hp, err := e.viaHAProxy(ctx, haproxySplice)
		if err != nil {
			return err
		}
		haveHAProxy = true
		res["download HAProxy"], res["upload HAProxy"] = hp.down, hp.up
		res["download HAProxy N"], res["upload HAProxy N"] = hp.downN, hp.upN
		sc.note("via HAProxy = haproxy -db in TCP mode on %s's own address, nbthread %d, %s, round robin over every backend's own address, no health checks; a connect probe precedes the transfers", e.lb.Name, hp.threads, strings.Join(haproxySplice, ", "))
		sc.note("HAProxy sent the single-stream download to %s and the upload to %s", hp.downBy, hp.upBy)
	}
	var ip *iperfResult
	if _, err := exec.LookPath("iperf3"); err != nil {
		sc.note("iperf3 cross-check skipped: iperf3 is not installed (Debian/Ubuntu package iperf3)")
	} else {
		r, err := e.viaIperf3(ctx, w, backendOrder(e.opts.Backends, len(sc.Load1)))
		if err != nil {
			return err
		}
		ip = &r
		sc.note("iperf3 = %s, client and server in processes of their own, one stream of %v, -R for the download; via VIP with l2lb -p %s (persistence: an iperf3 test's control and data connections must reach the same server); download ratios are to the mean of the direct download before the router and VIP legs and the one again after them (direct again/first shows the drift between the two)", r.version, e.opts.Duration.Round(time.Second), iperfPersistence)
		sc.note("kernel router (iperf3) = the download through the VIP with f1 forwarding the client's packets as the pps scenario's kernel router (data straight from %s, as through l2lb); on veth it forwards inside the client's own send call, and the backend's reply runs there too. RPS = f1's eth0 receive work handed to a CPU by RPS (mask %s), an asynchronous hop like a NIC interrupt's or l2lb's thread", e.backends[0].Name, allCPUsMask())
	}
	for _, b := range backendOrder(e.opts.Backends, len(sc.Load1)) {
		if err := e.withBalancer(ctx, b, w, func() error { return measure(b+" VIP", vip) }); err != nil {
			return err
		}
	}
	suffixes := []string{""}
	if e.opts.Streams > 1 {
		suffixes = append(suffixes, " N")
	}
	for _, b := range e.opts.Backends {
		p := backendPrefix(b)
		for _, sfx := range suffixes {
			label := ""
			if sfx != "" {
				label = fmt.Sprintf(", %d streams", e.opts.Streams)
			}
			for _, dir := range dirs {
				v := res[dir+" "+b+" VIP"+sfx]
				sc.add(p+dir+" via VIP"+label, "Gbit/s", v/1e9)
				sc.add(p+dir+" VIP/direct"+label, "ratio", ratio(v, res[dir+" direct"+sfx]))
				if haveHAProxy {
					sc.add(p+dir+" VIP/HAProxy"+label, "ratio", ratio(v, res[dir+" HAProxy"+sfx]))
				}
			}
		}
	}
	for _, sfx := range suffixes {
		label := ""
		if sfx != "" {
			label = fmt.Sprintf(", %d streams", e.opts.Streams)
		}
		for _, dir := range dirs {
			sc.add(dir+" direct"+label, "Gbit/s", res[dir+" direct"+sfx]/1e9)
			if haveHAProxy {
				sc.add(dir+" via HAProxy"+label, "Gbit/s", res[dir+" HAProxy"+sfx]/1e9)
			}
		}
	}
	if ip != nil {
		for _, b := range e.opts.Backends {
			p, v := backendPrefix(b), ip.vip[b]
			sc.add(p+"download via VIP (iperf3)", "Gbit/s", v.down/1e9)
			sc.add(p+"download VIP/direct (iperf3)", "ratio", ratio(v.down, ip.downRef()))
			sc.add(p+"upload via VIP (iperf3)", "Gbit/s", v.up/1e9)
			sc.add(p+"upload VIP/direct (iperf3)", "ratio", ratio(v.up, ip.upDirect))
			sc.add(p+"download VIP/kernel router, RPS (iperf3)", "ratio", ratio(v.down, ip.downRouterRPS))
		}
		sc.add("download direct (iperf3)", "Gbit/s", ip.downDirect/1e9)
		sc.add("download direct again (iperf3)", "Gbit/s", ip.downDirectAgain/1e9)
		sc.add("download direct again/first (iperf3)", "ratio", ratio(ip.downDirectAgain, ip.downDirect))
		sc.add("upload direct (iperf3)", "Gbit/s", ip.upDirect/1e9)
		sc.add("download via kernel router (iperf3)", "Gbit/s", ip.downRouter/1e9)
		sc.add("download kernel router/direct (iperf3)", "ratio", ratio(ip.downRouter, ip.downRef()))
		sc.add("download via kernel router, RPS (iperf3)", "Gbit/s", ip.downRouterRPS/1e9)
		sc.add("download kernel router, RPS/direct (iperf3)", "ratio", ratio(ip.downRouterRPS, ip.downRef()))
	}
	return nil
}

// backendPrefix is what the names of a fast-path backend's metrics start
// with: nothing for AF_PACKET, the default, which keeps the names it always
// had; the backend's name and a space for the others.
func backendPrefix(backend string) string {
	if backend == "afpacket" {
		return ""
	}
	return backend + " "
}

// backendOrder returns the order in which the run-th run (from 1) of a
// scenario measures backends: as given on odd runs, reversed on even ones, so
// that what drifts within a run (the machine's load, the namespaces' socket
// state) does not always favour the same backend.
func backendOrder(backends []string, run int) []string {
	out := slices.Clone(backends)
	if run%2 == 0 {
		slices.Reverse(out)
	}
	return out
}

// withBalancer runs f with l2lb started on backend with w workers, and
// stops the balancer after.
func (e *env) withBalancer(ctx context.Context, backend string, w int, f func() error) error {
	if _, err := e.startBalancer(ctx, backend, w); err != nil {
		return err
	}
	defer e.stopBalancer()
	return f()
}

// transferN runs n transfers to raddr at once and returns the sum of their
// goodputs in bits per second.
func (e *env) transferN(ctx context.Context, raddr netip.AddrPort, upload bool, n int) (float64, error) {
	rates := make([]float64, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rates[i], errs[i] = e.transfer(ctx, raddr, upload)
		}()
	}
	wg.Wait()
	var sum float64
	for _, r := range rates {
		sum += r
	}
	return sum, errors.Join(errs...)
}

// connRate opens, reads to EOF and closes connections to raddr from
// opts.Dialers parallel dialers for the phase duration and returns
// completed connections per second.
func (e *env) connRate(ctx context.Context, raddr netip.AddrPort) (rate float64, failed uint64, err error) {
	var ok, bad atomic.Uint64
	var wg sync.WaitGroup
	stopAt := time.Now().Add(e.opts.Duration)
	start := time.Now()
	for range e.opts.Dialers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The loop runs inside the namespace, so every socket it
			// creates belongs to it, without a thread switch per dial.
			e.client.Do(func() error {
				d := net.Dialer{Timeout: 2 * time.Second}
				var b [8]byte
				for time.Now().Before(stopAt) && ctx.Err() == nil {
					c, err := d.DialContext(ctx, "tcp4", raddr.String())
					if err != nil {
						bad.Add(1)
						continue
					}
					c.SetReadDeadline(time.Now().Add(2 * time.Second))
					n, err := c.Read(b[:])
					if n == 1 || err == nil {
						ok.Add(1)
					} else {
						bad.Add(1)
					}
					c.Close()
				}
				return nil
			})
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	return float64(ok.Load()) / time.Since(start).Seconds(), bad.Load(), nil
}

// runConn is one run of the conn scenario.
func (e *env) runConn(ctx context.Context, sc *Scenario) error {
	w := e.opts.Workers[len(e.opts.Workers)-1]
	sc.note("%d parallel dialers; each connection: connect, read the server's 1 byte, server closes first; via VIP = l2lb with %d worker(s) on %s, one after the other, in the reverse order on even runs (metrics of backends other than afpacket are prefixed with the backend's name)", e.opts.Dialers, w, strings.Join(e.opts.Backends, ", "))
	e.logf("conn: direct")
	direct, dfail, err := e.connRate(ctx, netip.AddrPortFrom(e.backends[0].Addr, connPort))
	if err != nil {
		return err
	}
	sc.add("direct", "conn/s", direct)
	sc.add("failed direct", "conns", float64(dfail))
	for _, b := range backendOrder(e.opts.Backends, len(sc.Load1)) {
		err := e.withBalancer(ctx, b, w, func() error {
			e.logf("conn: via VIP, %s", b)
			vip, vfail, err := e.connRate(ctx, netip.AddrPortFrom(e.vip, connPort))
			if err != nil {
				return err
			}
			p := backendPrefix(b)
			sc.add(p+"via VIP", "conn/s", vip)
			sc.add(p+"VIP/direct", "ratio", ratio(vip, direct))
			sc.add(p+"failed via VIP", "conns", float64(vfail))
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}
