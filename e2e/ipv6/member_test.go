package ipv6

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/testbed"
)

// A member named by its IPv6 address (--member 2001:db8::12 instead of 192.0.2.12) gets its MAC
// by neighbour discovery — f2 answers a solicitation for its address from f1 — is listed with that
// MAC, ready and healthy, and receives flows to both VIPs, IPv4 and IPv6: DSR needs only its MAC.
func TestIPv6MemberByIPv6Address(t *testing.T) {
	bed := needBed(t)
	f2 := bed.Frontends[1]
	members := []netip.Addr{bed.Frontends[0].Addr, f2.Addr6, bed.Frontends[2].Addr}
	var caps map[string]*testbed.Capture
	b := startBalancer(t, bed, options{members: members, extra: []string{"-p", "0"}, before: func() {
		if err := f1(bed).FlushNeigh(); err != nil {
			t.Fatal(err)
		}
		caps = startCaptures(t, f2)
	}})
	st := b.statusCLI(t)
	m, ok := st.FindMember(f2.Addr6)
	t.Logf("member %v: %+v", f2.Addr6, m)
	if !ok {
		t.Fatalf("status lists no member %v: %+v", f2.Addr6, st.Members)
	}
	if m.MAC != f2.MAC.String() || !m.Ready || !m.Healthy || m.Local || m.Weight != 100 {
		t.Errorf("member %v: mac %q ready %v healthy %v local %v weight %d; want f2's MAC %v, ready, healthy, not local, weight 100",
			f2.Addr6, m.MAC, m.Ready, m.Healthy, m.Local, m.Weight, f2.MAC)
	}
	if _, ok := st.FindMember(f2.Addr); ok {
		t.Errorf("status lists f2's IPv4 address %v as a member too: %+v", f2.Addr, st.Members)
	}

	// Flows of both families reach f2 (and the others).
	conns6 := askMany(t, 150, sources6(bed), netip.AddrPortFrom(vip6(bed), tcpPort))
	conns4 := askMany(t, 150, sources4(bed), netip.AddrPortFrom(vip4(bed), tcpPort))
	c6, c4 := countNames(conns6), countNames(conns4)
	t.Logf("connections per frontend: IPv6 VIP %v, IPv4 VIP %v", c6, c4)
	for fam, c := range map[string]map[string]int{"IPv6": c6, "IPv4": c4} {
		for _, f := range bed.Frontends {
			if c[f.Name] == 0 {
				t.Errorf("no %s VIP connection reached %s: %v", fam, f.Name, c)
			}
		}
	}
	name, err := bed.Clients[0].UDPAsk(bed.Clients[0].Addr6, netip.AddrPortFrom(vip6(bed), udpPort), 3000)
	t.Logf("a 3000-byte datagram to [%v]:%d answered by %q (%v)", vip6(bed), udpPort, name, err)
	if err != nil {
		t.Errorf("UDP to the IPv6 VIP: %v", err)
	}
	// Both families' flows are listed for the member named by its IPv6 address.
	cl := control.Dial(b.Control)
	for _, v := range []netip.Addr{vip4(bed), vip6(bed)} {
		cs, err := cl.Conns(v, f2.Addr6)
		if err != nil {
			t.Fatalf("conns --vip %v --member %v: %v", v, f2.Addr6, err)
		}
		n := 0
		for _, c := range cs {
			if strings.Contains(c.VIP, v.String()) && strings.Contains(c.Member, f2.Addr6.String()) {
				n++
			}
		}
		t.Logf("conns --vip %v --member %v: %d entries (of %d listed)", v, f2.Addr6, n, len(cs))
		if n == 0 || n != len(cs) {
			t.Errorf("conns --vip %v --member %v lists %d entries, %d of them of that VIP and member; want some, all of them (first: %+v)",
				v, f2.Addr6, len(cs), n, first(cs))
		}
	}
	st = b.statusCLI(t)
	m, _ = st.FindMember(f2.Addr6)
	if m.Packets == 0 || m.Bytes == 0 {
		t.Errorf("member %v forwarded %d packets, %d bytes; want some", f2.Addr6, m.Packets, m.Bytes)
	}

	// The MAC came from NDP: f2 answered a solicitation for its address from f1.
	time.Sleep(50 * time.Millisecond)
	cs := stopCaptures(t, caps)[f2.Name]
	answered := false
	for _, a := range cs.NDPAdvertsFor(f2.Addr6) {
		if a.Solicited && macEq(a.EthSrc, f2.MAC) && macEq(a.MAC, f2.MAC) && a.Dst.IsLinkLocalUnicast() {
			answered = true
		}
	}
	if !answered {
		t.Errorf("f2 sent no solicited advertisement for %v to a link-local address (the balancer's NDP): %+v",
			f2.Addr6, cs.NDPAdvertsFor(f2.Addr6))
	}
}

func first(cs []control.Conn) any {
	if len(cs) == 0 {
		return nil
	}
	return cs[0]
}

// A member list naming the balancer's own node by its IPv6 address (--member 2001:db8::11 on f1)
// makes that member local, as its IPv4 address does: its share is re-injected on lo, not sent to
// its own MAC out of eth0 (which a switch never hands back), and connections to both VIPs are
// answered by it.
func TestIPv6SelfMemberByIPv6Address(t *testing.T) {
	bed := needBed(t)
	self := f1(bed)
	members := []netip.Addr{self.Addr6, bed.Frontends[1].Addr, bed.Frontends[2].Addr}
	b := startBalancer(t, bed, options{members: members, extra: []string{"-p", "0"}})
	st := b.statusCLI(t)
	m, ok := st.FindMember(self.Addr6)
	t.Logf("member %v: %+v", self.Addr6, m)
	if !ok || !m.Local {
		t.Errorf("member %v (f1's own IPv6 address) is listed %v with local=%v; want local", self.Addr6, ok, m.Local)
	}
	conns6 := askMany(t, 60, sources6(bed), netip.AddrPortFrom(vip6(bed), tcpPort))
	conns4 := askMany(t, 60, sources4(bed), netip.AddrPortFrom(vip4(bed), tcpPort))
	c6, c4 := countNames(conns6), countNames(conns4)
	t.Logf("connections per frontend: IPv6 VIP %v, IPv4 VIP %v", c6, c4)
	if c6[self.Name] == 0 || c4[self.Name] == 0 {
		t.Errorf("f1 named by %v answered IPv6 %d, IPv4 %d connections; want some of each", self.Addr6, c6[self.Name], c4[self.Name])
	}
}
