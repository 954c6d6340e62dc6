package ipv6

import (
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/testbed"
)

// Clients find the IPv6 VIP by neighbour discovery alone: with their caches flushed and no static
// entry, both the testbed's own solicitations and the kernel's (a TCP connection to the VIP) are
// answered with the virtual MAC — the default one of SyncID 0, or --vmac — and only by the active
// balancer: no frontend answers for the VIP on its lo, f1's kernel included. Taking the role
// sends unsolicited advertisements with the override flag. Once the balancer has stopped, nobody
// answers.
func TestNDPResolvesVIP(t *testing.T) {
	bed := needBed(t)
	for _, tc := range []struct {
		name  string
		extra []string
		want  net.HardwareAddr
	}{
		{"default vmac", nil, defaultVMAC},
		{"--vmac", []string{"--vmac", "02:aa:bb:cc:dd:06"}, net.HardwareAddr{0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x06}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v6 := vip6(bed)
			var caps map[string]*testbed.Capture
			b := startBalancer(t, bed, options{extra: append([]string{"-p", "0"}, tc.extra...), before: func() {
				// From before the start, to see the announcements of the takeover.
				caps = startCaptures(t, bed.Clients...)
			}})
			if !macEq(b.VMAC6, tc.want) {
				t.Errorf("the IPv6 VIP resolves to %v, want the virtual MAC %v", b.VMAC6, tc.want)
			}
			for _, f := range bed.Frontends {
				if macEq(b.VMAC6, f.MAC) {
					t.Errorf("the IPv6 VIP resolves to %s's own MAC %v", f.Name, f.MAC)
				}
			}
			resolutions := 0
			for _, c := range bed.Clients {
				// The testbed's own solicitation, independent of the kernel's cache.
				mac, err := c.NDPResolve(v6)
				resolutions++
				if err != nil || !macEq(mac, tc.want) {
					t.Errorf("%s: NDPResolve(%v) = %v, %v; want %v", c.Name, v6, mac, err, tc.want)
				}
				// The kernel's: an empty cache, a connection, an entry learnt by NDP.
				if err := c.FlushNeigh(); err != nil {
					t.Fatal(err)
				}
				if e, ok := neigh(t, c, v6); ok && len(e.LLAddr) > 0 {
					t.Fatalf("%s: neighbour entry for %v survived the flush: %+v", c.Name, v6, e)
				}
				start := time.Now()
				name, err := c.AskName(c.Addr6, netip.AddrPortFrom(v6, tcpPort))
				resolutions++
				if err != nil {
					t.Errorf("%s: NAME over [%v]:%d with an empty neighbour cache: %v", c.Name, v6, tcpPort, err)
					continue
				}
				e, ok := neigh(t, c, v6)
				t.Logf("%s: connection to [%v]:%d answered by %s in %v; neighbour entry %+v", c.Name, v6, tcpPort, name,
					time.Since(start).Round(time.Millisecond), e)
				if !ok || e.LLAddr != tc.want.String() {
					t.Errorf("%s: kernel neighbour entry for %v = %+v (found %v), want lladdr %v", c.Name, v6, e, ok, tc.want)
				}
				if slices.Contains(e.State, "PERMANENT") || slices.Contains(e.State, "NOARP") {
					t.Errorf("%s: neighbour entry for %v is %v: not learnt by NDP", c.Name, v6, e.State)
				}
			}
			time.Sleep(100 * time.Millisecond)
			st := stopCaptures(t, caps)
			solicited, announced := 0, 0
			for name, cs := range st {
				for _, a := range cs.NDPAdvertsFor(v6) {
					if !macEq(a.EthSrc, tc.want) || (a.MAC != nil && !macEq(a.MAC, tc.want)) {
						owner := "someone else"
						if h := bed.HostByMAC(a.EthSrc); h != nil {
							owner = h.Name
						}
						t.Errorf("%s saw %s answer for %v: %+v; only the active balancer's virtual MAC %v may", name, owner, v6, a, tc.want)
					}
					if a.Solicited {
						solicited++
					} else if a.Override && a.Dst == netip.MustParseAddr("ff02::1") {
						announced++
					}
				}
			}
			t.Logf("advertisements for %v seen by the clients: %d solicited, %d unsolicited announcements", v6, solicited, announced)
			if solicited < resolutions {
				t.Errorf("the clients saw %d solicited advertisements for %v, want at least one per resolution (%d)", solicited, v6, resolutions)
			}
			if announced == 0 {
				t.Errorf("no unsolicited advertisement with the override flag to ff02::1 for %v when the balancer took the role", v6)
			}
			s := b.statusCLI(t)
			t.Logf("status: virtual MAC %s, VIPs %v, neighbour answers %+v", s.VirtualMAC, s.VIPs, s.ARP)
			if s.VirtualMAC != tc.want.String() || s.ARP.NDPReplies == 0 || s.ARP.Conflicts != 0 || s.ARP.Announced == 0 {
				t.Errorf("status: virtual MAC %q, ndp_replies %d, announced %d, conflicts %d; want %v, some answers and announcements, no conflict",
					s.VirtualMAC, s.ARP.NDPReplies, s.ARP.Announced, s.ARP.Conflicts, tc.want)
			}
			if !slices.Contains(s.VIPs, v6.String()) {
				t.Errorf("status lists VIPs %v, want %v among them", s.VIPs, v6)
			}

			// Without the balancer nobody answers: f1's kernel takes nothing over, the other
			// frontends stay silent.
			b.stop(t)
			caps = startCaptures(t, bed.Clients...)
			for _, c := range bed.Clients {
				if mac, err := c.NDPResolve(v6); !isTimeout(err) {
					t.Errorf("%s: after l2lb stopped NDPResolve(%v) = %v, %v; want no answer", c.Name, v6, mac, err)
				}
			}
			c1 := bed.Clients[0]
			if err := c1.FlushNeigh(); err != nil {
				t.Fatal(err)
			}
			if cn, err := c1.DialTCP(netip.AddrPortFrom(c1.Addr6, 0), netip.AddrPortFrom(v6, tcpPort), 2*time.Second); err == nil {
				cn.Close()
				t.Errorf("c1 connected to [%v]:%d after l2lb stopped", v6, tcpPort)
			}
			if e, ok := neigh(t, c1, v6); ok && e.LLAddr != "" {
				t.Errorf("c1 learnt %v for %v after l2lb stopped (%v)", e.LLAddr, v6, e.State)
			}
			st = stopCaptures(t, caps)
			for name, cs := range st {
				if got := cs.NDPAdvertsFor(v6); len(got) != 0 {
					t.Errorf("%s saw advertisements for %v after l2lb stopped: %+v", name, v6, got)
				}
			}
		})
	}
}
