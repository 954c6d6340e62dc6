package ipv6

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/dataplane/node"
	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/testbed"
)

// TestAFXDPBackend runs the balancer on the AF_XDP backend (issue 14), with TCP left to the
// kernel's GRO and AF_PACKET rings (the default) and with every frame on AF_XDP, and checks
// through both VIPs what the AF_PACKET tests check: 20 MB downloads and uploads verified byte
// for byte on a forwarded frontend and on f1 (re-injected on lo), fragmented SIP-sized UDP
// answered, and, after SIGTERM, no XDP program left on f1's interface.
func TestAFXDPBackend(t *testing.T) {
	bed := needBed(t)
	for _, tcp := range []string{"kernel", "xsk"} {
		t.Run("tcp="+tcp, func(t *testing.T) {
			b := startBalancer(t, bed, options{extra: []string{"-p", "0", "--backend", "afxdp", "--xdp-tcp", tcp}})
			st := b.statusCLI(t)
			// On a veth with TCP left to the kernel, auto mode attaches in generic mode (the
			// peer keeps GSO); with TCP on AF_XDP, natively. One queue: one AF_XDP socket, and
			// with TCP to the kernel one AF_PACKET ring for the one worker.
			want := map[string]struct {
				mode    string
				sockets int
			}{"kernel": {"generic", 2}, "xsk": {"native", 1}}[tcp]
			if fp := st.FastPath; fp == nil || fp.Backend != "afxdp" || fp.TCP != tcp || fp.XDPMode != want.mode ||
				fp.Queues != 1 || fp.Sockets != want.sockets {
				t.Fatalf("status fast path %+v, want afxdp, TCP via %s, %s XDP, 1 queue, %d sockets", fp, tcp, want.mode, want.sockets)
			}
			for _, fam := range []struct {
				name string
				vip  netip.Addr
				srcs []source
			}{{"IPv4", vip4(bed), sources4(bed)}, {"IPv6", vip6(bed), sources6(bed)}} {
				raddr := netip.AddrPortFrom(fam.vip, tcpPort)
				for _, kind := range []string{"download", "upload"} {
					onF1, elsewhere := 0, 0
					for try := 0; try < maxTries && (onF1 == 0 || elsewhere == 0); try++ {
						s := fam.srcs[try%len(fam.srcs)]
						start := time.Now()
						_, by, err := transfer(bed, s, kind, raddr)
						if err != nil {
							t.Fatalf("%s 20 MB %s from %v to %v: %v\nlog:\n%s", fam.name, kind, s.Addr, raddr, err, b.LogText())
						}
						if len(by) != 1 {
							t.Fatalf("%s %s from %v: served by %v, want exactly one frontend", fam.name, kind, s.Addr, by)
						}
						t.Logf("%s 20 MB %s via %s verified (%.0f MB/s)", fam.name, kind, by[0],
							float64(transferSize)/(1<<20)/time.Since(start).Seconds())
						if by[0] == f1(bed).Name {
							onF1++
						} else {
							elsewhere++
						}
					}
					if onF1 == 0 || elsewhere == 0 {
						t.Errorf("%s %s: %d on f1, %d elsewhere after %d tries; want both", fam.name, kind, onF1, elsewhere, maxTries)
					}
				}
				// 3000-byte datagrams: the client's kernel fragments them, and every fragment
				// takes the AF_XDP path.
				udp := netip.AddrPortFrom(fam.vip, udpPort)
				for i := 0; i < 12; i++ {
					s := fam.srcs[i%len(fam.srcs)]
					if _, err := s.Host.UDPAsk(s.Addr, udp, 3000); err != nil {
						t.Errorf("%s UDP 3000 bytes from %v to %v: %v", fam.name, s.Addr, udp, err)
					}
				}
			}
			b.stop(t)
			noXDPLeft(t, bed, "after l2lb exited")
		})
	}
}

// TestAFXDPRefusesSuperFrames checks that `l2lb run --backend afxdp --xdp-tcp xsk --xdp-mode
// generic` on a veth exits at once with an error that says why: generic XDP would see the
// peer's GSO super-frames, which do not fit a UMEM frame and would be dropped, stalling every
// bulk TCP transfer through the VIP (issue 14). No XDP program is left on the interface.
func TestAFXDPRefusesSuperFrames(t *testing.T) {
	refusesToStart(t, []string{"--xdp-tcp", "xsk", "--xdp-mode", "generic"}, "eth0 is a veth", "--xdp-tcp kernel")
}

// TestAFXDPRefusesNativeFlowCacheOnVeth checks that the flow cache with native XDP on a veth
// (--xdp-tcp xsk: auto mode attaches natively) is refused at start, saying why: a native veth
// program's XDP_TX is dropped unless the peer has GRO or an XDP program, so every datagram the
// cache forwarded would be lost (issue 14: l2lb bench pps lost all of them).
func TestAFXDPRefusesNativeFlowCacheOnVeth(t *testing.T) {
	refusesToStart(t, []string{"--xdp-tcp", "xsk", "--xdp-flows", "64"}, "eth0 is a veth with native XDP", "--xdp-mode generic")
}

// refusesToStart checks that `l2lb run --backend afxdp` with flags exits with an error within
// 10 s, logging every one of why, and leaves no XDP program behind.
func refusesToStart(t *testing.T, flags []string, why ...string) {
	bed := needBed(t)
	args, _ := balancerArgs(t, bed, options{extra: append([]string{"-p", "0", "--backend", "afxdp"}, flags...)})
	b := e2e.StartBalancer(t, f1(bed), suite.Bin, args)
	if !b.Exited(10 * time.Second) {
		// SIGQUIT first: the Go runtime writes every goroutine's stack to the log below.
		b.Cmd.Process.Signal(syscall.SIGQUIT)
		if !b.Exited(time.Second) {
			b.Cmd.Process.Kill()
			b.Exited(10 * time.Second)
		}
		t.Fatalf("l2lb %v still running 10 s after start; want it to refuse\nlog:\n%s", flags, b.LogText())
	}
	if b.WaitErr() == nil {
		t.Errorf("l2lb exited 0; want a failure\nlog:\n%s", b.LogText())
	}
	t.Logf("l2lb exited (%v):\n%s", b.WaitErr(), b.LogText())
	if !b.LogContains(why...) {
		t.Errorf("the log does not say %q:\n%s", why, b.LogText())
	}
	noXDPLeft(t, bed, "after the refusal")
}

// noXDPLeft fails the test if an XDP program is attached to f1's eth0 (when: the moment, for
// the message).
func noXDPLeft(t *testing.T, bed *testbed.Bed, when string) {
	t.Helper()
	out, err := f1(bed).RunIP("-d", "link", "show", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "xdp") {
		t.Errorf("an XDP program is still on f1 eth0 %s:\n%s", when, out)
	}
}

// flowCacheSize is the --xdp-flows of TestAFXDPFlowCache.
const flowCacheSize = 4096

// udpFlow is one UDP socket of a client, connected to a VIP: every datagram it sends belongs to
// the same flow.
type udpFlow struct {
	c    *net.UDPConn
	from source
}

func dialUDPFlow(t *testing.T, s source, raddr netip.AddrPort) *udpFlow {
	t.Helper()
	var c *net.UDPConn
	err := s.Host.Do(func() (err error) {
		c, err = net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(s.Addr, 0)), net.UDPAddrFromAddrPort(raddr))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &udpFlow{c: c, from: s}
}

// ask sends one datagram with a fresh payload and returns the name of the frontend that
// answered it, after checking the answer's digest of the payload ("" and the error after
// timeout without an answer).
func (f *udpFlow) ask(timeout time.Duration) (string, error) {
	payload := make([]byte, 64)
	rand.Read(payload)
	sum := sha256.Sum256(payload)
	want := " " + hex.EncodeToString(sum[:])
	if _, err := f.c.Write(payload); err != nil {
		return "", err
	}
	buf := make([]byte, 512)
	for {
		f.c.SetReadDeadline(time.Now().Add(timeout))
		n, err := f.c.Read(buf)
		if err != nil {
			return "", err
		}
		if name, ok := strings.CutSuffix(string(buf[:n]), want); ok {
			return name, nil
		}
		// A late answer to an earlier datagram (after a timeout): not this one's.
	}
}

// TestAFXDPFlowCache runs the AF_XDP backend with the XDP flow cache (--xdp-flows, issue 14) and
// checks with real UDP flows through the IPv4 VIP:
//   - a flow on a forwarded frontend is answered datagram by datagram, exactly once each, by one
//     frontend, and most of its datagrams are forwarded by the cache (status flow_cache), whose
//     counts reach the forwarded-verdict counter;
//   - when that frontend stops answering ARP and l2lb presumes it down, the flow's next
//     datagrams are answered by another frontend: the cache does not keep sending them to the
//     frontend l2lb gave up on;
//   - on a veth, native XDP with the cache is refused at start (its XDP_TX would be dropped).
func TestAFXDPFlowCache(t *testing.T) {
	bed := needBed(t)
	b := startBalancer(t, bed, options{extra: []string{"-p", "0", "--backend", "afxdp", "--xdp-flows", strconv.Itoa(flowCacheSize)}})
	st := b.statusCLI(t)
	if fp := st.FastPath; fp == nil || fp.FlowCache == nil || fp.FlowCache.Size != flowCacheSize || fp.XDPMode != "generic" {
		t.Fatalf("status fast path %+v, want generic XDP with a flow cache of %d", fp, flowCacheSize)
	}
	raddr := netip.AddrPortFrom(vip4(bed), udpPort)
	var flow *udpFlow
	var owner string
	for i := 0; flow == nil; i++ {
		if i == maxTries {
			t.Fatalf("no UDP flow on a frontend other than f1 after %d tries", maxTries)
		}
		f := dialUDPFlow(t, sources4(bed)[i%len(sources4(bed))], raddr)
		name, err := f.ask(2 * time.Second)
		if err != nil {
			t.Fatalf("first datagram from %v: %v\nlog:\n%s", f.c.LocalAddr(), err, b.LogText())
		}
		if name != f1(bed).Name {
			flow, owner = f, name
		}
	}
	const datagrams = 300
	fwdBefore := st.Verdicts["forwarded"]
	for i := 0; i < datagrams; i++ {
		name, err := flow.ask(2 * time.Second)
		if err != nil {
			t.Fatalf("datagram %d of the flow from %v: %v\nlog:\n%s", i, flow.c.LocalAddr(), err, b.LogText())
		}
		if name != owner {
			t.Fatalf("datagram %d answered by %s, the flow's first ones by %s", i, name, owner)
		}
	}
	// Exactly once: no second answer to any of them is on its way.
	flow.c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := flow.c.Read(make([]byte, 512)); err == nil {
		t.Fatalf("an extra answer (%d bytes) after %d datagrams each answered once", n, datagrams)
	}
	var fc *control.FlowCache
	for deadline := time.Now().Add(3 * node.FlowSweepInterval); ; time.Sleep(50 * time.Millisecond) {
		st = b.statusCLI(t)
		if fc = st.FastPath.FlowCache; fc.Forwarded >= datagrams*9/10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("flow cache %+v %v after %d datagrams of one flow: want %d or more forwarded by it", *fc, 3*node.FlowSweepInterval, datagrams, datagrams*9/10)
		}
	}
	if fc.Installs == 0 || fc.InstallErrors != 0 {
		t.Errorf("flow cache %+v: want installs and no failed ones", fc)
	}
	if got := st.Verdicts["forwarded"] - fwdBefore; got < datagrams {
		t.Errorf("forwarded verdicts moved by %d for %d datagrams; the cache's are not counted", got, datagrams)
	}
	t.Logf("flow cache after %d datagrams of one flow on %s: %+v", datagrams, owner, *fc)

	// The frontend stops answering ARP: l2lb presumes it down and reschedules its flows.
	var down *testbed.Host
	for _, h := range bed.Frontends {
		if h.Name == owner {
			down = h
		}
	}
	if out, err := down.RunIP("link", "set", "eth0", "arp", "off"); err != nil {
		t.Fatalf("arp off on %s: %v: %s", down.Name, err, out)
	}
	t.Cleanup(func() { down.RunIP("link", "set", "eth0", "arp", "on") })
	start := time.Now()
	for !b.LogContains("frontend MAC no longer resolves", down.Addr.String()) {
		if time.Since(start) > 30*time.Second {
			t.Fatalf("l2lb did not give up on %s in 30 s with its ARP off\nlog:\n%s", owner, b.LogText())
		}
		flow.ask(100 * time.Millisecond) // answered by the owner, or lost: both are fine here
	}
	t.Logf("l2lb gave up on %s %v after its ARP went off", owner, time.Since(start).Round(time.Millisecond))
	// The engine's change is published to the cache right after the log line.
	time.Sleep(100 * time.Millisecond)
	to := map[string]int{}
	for i := 0; i < 20; i++ {
		name, err := flow.ask(2 * time.Second)
		if err != nil || name == owner {
			t.Fatalf("datagram %d after l2lb gave up on %s: answer %q, err %v: the cache kept the flow there\nlog:\n%s",
				i, owner, name, err, b.LogText())
		}
		to[name]++
	}
	if len(to) != 1 {
		t.Errorf("the moved flow was answered by %v, want one frontend", to)
	}
	b.stop(t)
	noXDPLeft(t, bed, "after l2lb exited")
}

// TestAFXDPFlowCacheTCP checks the flow cache with real TCP over the IPv4 VIP: 20 MB downloads
// and uploads through a forwarded frontend arrive whole (the testbed checks their sha256) while
// the cache forwards the client's ACK-only segments, which the cache's counters and the
// forwarded verdicts both show, and nothing the cache does makes the balancer refuse an install.
func TestAFXDPFlowCacheTCP(t *testing.T) {
	bed := needBed(t)
	b := startBalancer(t, bed, options{extra: []string{"-p", "0", "--backend", "afxdp", "--xdp-flows", strconv.Itoa(flowCacheSize)}})
	raddr := netip.AddrPortFrom(vip4(bed), tcpPort)
	srcs := sources4(bed)
	for _, kind := range []string{"download", "upload"} {
		done := false
		for try := 0; try < maxTries && !done; try++ {
			s := srcs[try%len(srcs)]
			st := b.statusCLI(t)
			fwdBefore, cacheBefore := st.Verdicts["forwarded"], st.FastPath.FlowCache.Forwarded
			_, by, err := transfer(bed, s, kind, raddr)
			if err != nil {
				t.Fatalf("20 MB %s from %v to %v with the flow cache: %v\nlog:\n%s", kind, s.Addr, raddr, err, b.LogText())
			}
			if len(by) != 1 {
				t.Fatalf("%s from %v: served by %v, want exactly one frontend", kind, s.Addr, by)
			}
			if by[0] == f1(bed).Name {
				continue // re-injected on lo: never cached
			}
			done = true
			// The sweep hands the cache's counts back within a sweep interval.
			time.Sleep(node.FlowSweepInterval + 200*time.Millisecond)
			st = b.statusCLI(t)
			fc := st.FastPath.FlowCache
			cached, fwd := fc.Forwarded-cacheBefore, st.Verdicts["forwarded"]-fwdBefore
			t.Logf("20 MB %s via %s verified: %d frames forwarded, %d of them by the flow cache; cache %+v", kind, by[0], fwd, cached, *fc)
			if fc.InstallErrors != 0 {
				t.Errorf("%s: %d failed installs", kind, fc.InstallErrors)
			}
			if fwd < cached {
				t.Errorf("%s: forwarded verdicts moved by %d, fewer than the %d the cache forwarded", kind, fwd, cached)
			}
			// Almost every frame a download's client sends is an ACK-only segment, at least one
			// per GRO super-frame of the 20 MB (in five runs here the cache forwarded 188 to 456
			// of 192 to 460 forwarded frames, all but the handshake's and the request's): the
			// cache must have forwarded most of them. An upload's client
			// sends data; its few ACK-only segments may all be seen before the flow is
			// installed.
			if kind == "download" && (cached < 50 || 2*cached < fwd) {
				t.Errorf("download: the cache forwarded %d of the %d frames forwarded, want 50 or more and at least half", cached, fwd)
			}
		}
		if !done {
			t.Fatalf("%s: no transfer on a frontend other than f1 after %d tries", kind, maxTries)
		}
	}
	b.stop(t)
	noXDPLeft(t, bed, "after l2lb exited")
}
