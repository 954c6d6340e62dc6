package ipv6

import (
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

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
						before := servedNow(bed)
						start := time.Now()
						var err error
						if kind == "download" {
							_, err = s.Host.Download(s.Addr, raddr, transferSize)
						} else {
							_, err = s.Host.Upload(s.Addr, raddr, transferSize)
						}
						if err != nil {
							t.Fatalf("%s 20 MB %s from %v to %v: %v\nlog:\n%s", fam.name, kind, s.Addr, raddr, err, b.LogText())
						}
						by := servedBy(bed, before, func(was, now testbed.Served) bool {
							return now.Downloads+now.Uploads > was.Downloads+was.Uploads
						})
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
	bed := needBed(t)
	args, _ := balancerArgs(t, bed, options{extra: []string{"-p", "0", "--backend", "afxdp", "--xdp-tcp", "xsk", "--xdp-mode", "generic"}})
	b := e2e.StartBalancer(t, f1(bed), suite.Bin, args)
	if !b.Exited(10 * time.Second) {
		// SIGQUIT first: the Go runtime writes every goroutine's stack to the log below.
		b.Cmd.Process.Signal(syscall.SIGQUIT)
		if !b.Exited(time.Second) {
			b.Cmd.Process.Kill()
			b.Exited(10 * time.Second)
		}
		t.Fatalf("l2lb still running 10 s after start in generic XDP with TCP on AF_XDP on a veth; want it to refuse\nlog:\n%s", b.LogText())
	}
	if b.WaitErr() == nil {
		t.Errorf("l2lb exited 0; want a failure\nlog:\n%s", b.LogText())
	}
	t.Logf("l2lb exited (%v):\n%s", b.WaitErr(), b.LogText())
	if !b.LogContains("eth0 is a veth", "--xdp-tcp kernel") {
		t.Errorf("the log does not say why (the veth) and what to do (--xdp-tcp kernel):\n%s", b.LogText())
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
