package testbed

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/l2lb/l2lb/hostcfg"
)

func TestOptionsValidation6(t *testing.T) {
	ip := netip.MustParseAddr
	bad := []Options{
		{VIPs6: []netip.Addr{ip("2001:db8:1::200")}},                         // outside Subnet6
		{VIPs6: []netip.Addr{ip("2001:db8::11")}},                            // f1's address
		{VIPs6: []netip.Addr{ip("2001:db8::101")}},                           // c1's extra address
		{VIPs6: []netip.Addr{ip("2001:db8::")}},                              // subnet-router anycast
		{VIPs6: []netip.Addr{ip("192.0.2.200")}},                             // IPv4
		{VIPs6: []netip.Addr{ip("::ffff:192.0.2.200")}},                      // IPv4-mapped
		{VIPs6: []netip.Addr{ip("2001:db8::200%eth0")}},                      // zone
		{VIPs6: []netip.Addr{DefaultVIP6, DefaultVIP6}},                      // duplicate
		{VIPs: []netip.Addr{ip("192.0.2.11")}},                               // f1 (its mirror too)
		{Router: &RouterOptions{MTU: 1279}},                                  // below the IPv6 minimum
		{Router: &RouterOptions{MTU: 1501}},                                  // above the veths' MTU
		{Router: &RouterOptions{}, VIPs: []netip.Addr{ip("192.0.2.254")}},    // the router's address
		{Router: &RouterOptions{}, VIPs6: []netip.Addr{ip("2001:db8::254")}}, // the router's address
	}
	for _, o := range bad {
		if err := o.normalize(); !errors.Is(err, ErrBadOptions) {
			t.Errorf("normalize(%+v) = %v, want ErrBadOptions", o, err)
		}
	}
	var o Options
	if err := o.normalize(); err != nil || !slices.Equal(o.VIPs6, []netip.Addr{DefaultVIP6}) || o.Router != nil {
		t.Fatalf("zero Options: %v, VIPs6 %v, Router %v", err, o.VIPs6, o.Router)
	}
	o = Options{VIPs: []netip.Addr{ip("192.0.2.200"), ip("192.0.2.201")}}
	if err := o.normalize(); err != nil || !slices.Equal(o.VIPs6, []netip.Addr{ip("2001:db8::200"), ip("2001:db8::201")}) {
		t.Fatalf("VIPs6 for two IPv4 VIPs: %v, %v", o.VIPs6, err)
	}
	ro := &RouterOptions{}
	o = Options{Router: ro, VIPs6: []netip.Addr{ip("2001:db8::300")}}
	if err := o.normalize(); err != nil || o.Router.MTU != MTU || ro.MTU != 0 || !slices.Equal(o.VIPs6, []netip.Addr{ip("2001:db8::300")}) {
		t.Fatalf("Router default MTU: %v, %+v (caller's %+v), VIPs6 %v", err, o.Router, ro, o.VIPs6)
	}
	// Behind the router the clients leave the switch's subnets: 192.0.2.1 is free.
	o = Options{Router: &RouterOptions{MTU: 1280}, VIPs: []netip.Addr{ip("192.0.2.1")}}
	if err := o.normalize(); err != nil {
		t.Fatalf("VIP 192.0.2.1 with a router: %v", err)
	}
}

func TestAddressScheme(t *testing.T) {
	ip := netip.MustParseAddr
	for in, want := range map[string]string{"192.0.2.1": "2001:db8::1", "192.0.2.11": "2001:db8::11",
		"192.0.2.101": "2001:db8::101", "192.0.2.200": "2001:db8::200", "192.0.2.255": "2001:db8::255"} {
		if got := mirror6(Subnet6, ip(in)); got != ip(want) {
			t.Errorf("mirror6(%s) = %v, want %s", in, got, want)
		}
	}
	o := Options{}
	if a := o.clientAddrs(2); a != (hostAddrs{ip("192.0.2.2"), ip("192.0.2.102"), ip("2001:db8::2"), ip("2001:db8::102")}) {
		t.Errorf("client 2 on the switch: %+v", a)
	}
	o.Router = &RouterOptions{}
	if a := o.clientAddrs(9); a != (hostAddrs{ip("198.51.100.9"), ip("198.51.100.109"), ip("2001:db8:1::9"), ip("2001:db8:1::109")}) {
		t.Errorf("client 9 behind the router: %+v", a)
	}
	if g := solicitedNode(ip("2001:db8::abcd:200")); g != ip("ff02::1:ffcd:200") || multicastMAC(g).String() != "33:33:ff:cd:02:00" {
		t.Errorf("solicited-node group %v, MAC %v", g, multicastMAC(g))
	}
	frame, dst, err := neighborSolicitation(net.HardwareAddr{2, 0, 0, 0, 0, 1}, ip("2001:db8::1"), DefaultVIP6)
	if err != nil || dst.String() != "33:33:ff:00:02:00" || len(frame) != 14+40+24+8 {
		t.Fatalf("neighborSolicitation: %d bytes to %v, %v", len(frame), dst, err)
	}
	if _, ok := parseNDPAdvert(frame); ok {
		t.Error("a solicitation parsed as an advertisement")
	}
}

// addrInfo is one entry of `ip -j addr show`.
type addrInfo struct {
	Family    string `json:"family"`
	Local     string `json:"local"`
	PrefixLen int    `json:"prefixlen"`
	Tentative bool   `json:"tentative"`
	NoDAD     bool   `json:"nodad"`
}

func addrsOf(t *testing.T, h *Host, dev string) []addrInfo {
	t.Helper()
	out, err := h.RunIP("-j", "addr", "show", "dev", dev)
	if err != nil {
		t.Fatal(err)
	}
	var links []struct {
		AddrInfo []addrInfo `json:"addr_info"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		t.Fatalf("%s: ip -j addr show dev %s: %s (%v)", h.Name, dev, out, err)
	}
	return links[0].AddrInfo
}

func hasAddr(list []addrInfo, a netip.Addr, bits int) (addrInfo, bool) {
	for _, x := range list {
		if x.Local == a.String() && x.PrefixLen == bits {
			return x, true
		}
	}
	return addrInfo{}, false
}

func TestBedIPv6(t *testing.T) {
	requireNetns(t)
	b, err := New(Options{Logf: t.Logf})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	vip6 := b.VIPs6[0]
	if vip6 != DefaultVIP6 || len(b.VIPs6) != 1 || b.Router != nil {
		t.Fatalf("VIPs6 %v, Router %v", b.VIPs6, b.Router)
	}
	c1, c2, f1, f2 := b.Clients[0], b.Clients[1], b.Frontends[0], b.Frontends[1]

	t.Run("addresses", func(t *testing.T) {
		for _, h := range append(slices.Clone(b.Clients), b.Frontends...) {
			if want := mirror6(Subnet6, h.Addr); h.Addr6 != want {
				t.Errorf("%s: Addr6 %v, want %v", h.Name, h.Addr6, want)
			}
			list := addrsOf(t, h, "eth0")
			for _, a := range append([]netip.Addr{h.Addr6}, h.Extra6...) {
				if x, ok := hasAddr(list, a, 64); !ok || !x.NoDAD {
					t.Errorf("%s: %v/64 nodad not on eth0: %+v", h.Name, a, list)
				}
			}
			linkLocal := 0
			for _, x := range list {
				if x.Tentative {
					t.Errorf("%s: %s/%d tentative: no address may wait for DAD", h.Name, x.Local, x.PrefixLen)
				}
				if strings.HasPrefix(x.Local, "fe80:") {
					linkLocal++
				}
			}
			if linkLocal != 1 {
				t.Errorf("%s: %d link-local addresses on eth0", h.Name, linkLocal)
			}
			lo := addrsOf(t, h, "lo")
			_, has := hasAddr(lo, vip6, 128)
			if isFrontend := h.Name[0] == 'f'; has != isFrontend {
				t.Errorf("%s: VIP %v/128 on lo = %v, want %v: %+v", h.Name, vip6, has, isFrontend, lo)
			}
		}
		if want := []netip.Addr{netip.MustParseAddr("2001:db8::101")}; !slices.Equal(c1.Extra6, want) {
			t.Errorf("c1 Extra6 %v, want %v", c1.Extra6, want)
		}
	})

	t.Run("frontends pass doctor", func(t *testing.T) {
		var ranges []hostcfg.PortRange
		for _, f := range b.Frontends {
			ranges = append(ranges, hostcfg.PortRange{Lo: f.PortRange[0], Hi: f.PortRange[1]})
		}
		for i, f := range b.Frontends {
			in := hostcfg.DoctorInput{Iface: "eth0", VIPs: append(slices.Clone(b.VIPs), b.VIPs6...),
				OtherPortRanges: slices.Delete(slices.Clone(ranges), i, i+1)}
			var fs []hostcfg.Finding
			if err := f.Do(func() error {
				fs = hostcfg.Doctor(hostcfg.ProcSysctl(), hostcfg.NetlinkAddrs(), in)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			n6 := 0
			for _, x := range fs {
				if !x.OK {
					t.Errorf("%s: %v", f.Name, x)
				}
				if x.Check == hostcfg.CheckProxyNDP || x.Check == hostcfg.CheckDisableIPv6 {
					n6++
				}
			}
			if n6 != 4 {
				t.Errorf("%s: %d IPv6 findings, want 4: %v", f.Name, n6, fs)
			}
		}
	})

	const tcpPort, udpPort = 8000, 5060
	for _, f := range b.Frontends {
		for _, a := range []netip.Addr{f.Addr6, vip6} {
			stop, err := f.ServeName(a, []uint16{tcpPort}, []uint16{udpPort})
			if err != nil {
				t.Fatalf("ServeName(%v): %v", a, err)
			}
			t.Cleanup(stop)
		}
	}

	t.Run("reach frontends over IPv6", func(t *testing.T) {
		const size = 300_000
		for _, c := range b.Clients {
			for _, la := range append([]netip.Addr{c.Addr6}, c.Extra6...) {
				for _, f := range b.Frontends {
					tcp := netip.AddrPortFrom(f.Addr6, tcpPort)
					udp := netip.AddrPortFrom(f.Addr6, udpPort)
					if name, err := c.AskName(la, tcp); err != nil || name != f.Name {
						t.Errorf("%s from %v: AskName(%v) = %q, %v; want %q", c.Name, la, tcp, name, err, f.Name)
					}
					if local, err := c.Download(la, tcp, size); err != nil || local.Addr() != la {
						t.Errorf("%s from %v: Download(%v) local %v: %v", c.Name, la, tcp, local, err)
					}
					if _, err := c.Upload(la, tcp, size); err != nil {
						t.Errorf("%s from %v: Upload(%v): %v", c.Name, la, tcp, err)
					}
					for _, n := range []int{100, 3000} { // 3000 bytes are fragmented by the sender
						if name, err := c.UDPAsk(la, udp, n); err != nil || name != f.Name {
							t.Errorf("%s from %v: UDPAsk(%v, %d) = %q, %v; want %q", c.Name, la, udp, n, name, err, f.Name)
						}
					}
				}
			}
		}
		// Family mismatch is the kernel's error, not a hang.
		if _, err := c1.AskName(c1.Addr, netip.AddrPortFrom(f1.Addr6, tcpPort)); err == nil {
			t.Error("IPv4 source to an IPv6 destination succeeded")
		}
		if _, err := c1.UDPAsk(netip.Addr{}, netip.AddrPortFrom(f1.Addr6, udpPort), 65528); !errors.Is(err, ErrBadOptions) {
			t.Errorf("UDPAsk of 65528 bytes over IPv6: %v, want ErrBadOptions", err)
		}
	})

	t.Run("ndp", func(t *testing.T) {
		capt, err := c1.Capture("eth0")
		if err != nil {
			t.Fatal(err)
		}
		if mac, err := c1.NDPResolve(f1.Addr6); err != nil || mac.String() != f1.MAC.String() {
			t.Errorf("NDPResolve(f1 %v) = %v, %v; want %v", f1.Addr6, mac, err, f1.MAC)
		}
		if mac, err := c1.NDPResolve(c2.Extra6[0]); err != nil || mac.String() != c2.MAC.String() {
			t.Errorf("NDPResolve(c2 extra %v) = %v, %v; want %v", c2.Extra6[0], mac, err, c2.MAC)
		}
		// The IPv6 counterpart of seed step 3: no frontend answers
		// neighbour solicitations for the VIP on its lo.
		start := time.Now()
		mac, err := c1.NDPResolve(vip6)
		took := time.Since(start)
		if !errors.Is(err, ErrTimeout) {
			t.Errorf("NDPResolve(VIP %v) = %v, %v; want ErrTimeout (some frontend answers for the VIP)", vip6, mac, err)
		}
		if took < DefaultARPTimeout-50*time.Millisecond || took > DefaultARPTimeout+time.Second {
			t.Errorf("NDPResolve(VIP) took %v, want about %v", took, DefaultARPTimeout)
		}
		if _, err := c1.NDPResolve(f1.Addr); !errors.Is(err, ErrBadOptions) {
			t.Errorf("NDPResolve(IPv4) = %v, want ErrBadOptions", err)
		}
		time.Sleep(50 * time.Millisecond)
		st := capt.Stop()
		if got := st.NDPAdvertsFor(vip6); len(got) != 0 {
			t.Errorf("advertisements for the VIP: %+v", got)
		}
		got := st.NDPAdvertsFor(f1.Addr6)
		if len(got) == 0 || got[0].MAC.String() != f1.MAC.String() || got[0].EthSrc.String() != f1.MAC.String() ||
			!got[0].Solicited || got[0].Dst != c1.Addr6 {
			t.Errorf("advertisements for f1 = %+v, want a solicited one from %v to %v", got, f1.MAC, c1.Addr6)
		}
	})

	// What the balancer does for a flow, done by hand: c1 sends frames for
	// the VIP to f2's MAC. f2 accepts them (the VIP is on its lo, IPv6 is a
	// weak-host stack too) and answers from the VIP directly: DSR over IPv6.
	t.Run("dsr by static neighbour", func(t *testing.T) {
		if _, err := c1.RunIP("-6", "neigh", "replace", vip6.String(), "lladdr", f2.MAC.String(), "dev", "eth0", "nud", "permanent"); err != nil {
			t.Fatal(err)
		}
		defer c1.RunIP("-6", "neigh", "del", vip6.String(), "dev", "eth0")
		capt, err := c1.Capture("eth0")
		if err != nil {
			t.Fatal(err)
		}
		raddr := netip.AddrPortFrom(vip6, tcpPort)
		conn, err := c1.DialTCP(netip.AddrPortFrom(c1.Addr6, 0), raddr, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if name, err := AskNameOver(conn, time.Second); err != nil || name != "f2" {
			t.Errorf("NAME via the VIP = %q, %v; want f2", name, err)
		}
		local := conn.LocalAddr().(*net.TCPAddr).AddrPort()
		conn.Close()
		if name, err := c1.UDPAsk(c1.Extra6[0], netip.AddrPortFrom(vip6, udpPort), 3000); err != nil || name != "f2" {
			t.Errorf("UDPAsk via the VIP = %q, %v; want f2", name, err)
		}
		time.Sleep(50 * time.Millisecond)
		st := capt.Stop()
		fs := st.Flows[Flow{Local: local, Remote: raddr}]
		if fs == nil || fs.SYNsSent != 1 || fs.SYNACKs != 1 || fs.RSTsSent+fs.RSTsReceived != 0 ||
			fs.SYNACKMACs[0].String() != f2.MAC.String() {
			t.Errorf("IPv6 flow %v->%v: %+v, want 1 SYN, 1 SYN-ACK from f2 %v, no RST (flows %v)", local, raddr, fs, f2.MAC, st.Flows)
		}
	})

	t.Run("flush", func(t *testing.T) {
		count := func() (n4, n6 int) {
			for _, fam := range []string{"-4", "-6"} {
				out, err := c1.RunIP(fam, "neigh", "show", "dev", "eth0", "nud", "reachable", "nud", "stale", "nud", "delay", "nud", "probe")
				if err != nil {
					t.Fatal(err)
				}
				n := len(strings.Fields(strings.TrimSpace(string(out))))
				if fam == "-4" {
					n4 = n
				} else {
					n6 = n
				}
			}
			return
		}
		// Nothing listens on f1's IPv4 address here: the refused connection
		// only fills c1's ARP cache.
		_, _ = c1.AskName(c1.Addr, netip.AddrPortFrom(f1.Addr, tcpPort))
		if _, err := c1.AskName(c1.Addr6, netip.AddrPortFrom(f1.Addr6, tcpPort)); err != nil {
			t.Fatal(err)
		}
		if n4, n6 := count(); n4 == 0 || n6 == 0 {
			t.Fatalf("before FlushNeigh: %d IPv4 and %d IPv6 neighbour entries, want some of each", n4, n6)
		}
		if err := c1.FlushNeigh(); err != nil {
			t.Fatal(err)
		}
		if n4, n6 := count(); n4 != 0 || n6 != 0 {
			t.Errorf("after FlushNeigh: %d IPv4 and %d IPv6 neighbour entries", n4, n6)
		}
	})
}

func TestRouter(t *testing.T) {
	requireNetns(t)
	const mtu = 1280
	b, err := New(Options{Frontends: 2, Clients: 2, Router: &RouterOptions{MTU: mtu}, Logf: t.Logf})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	r, c1, f1, f2 := b.Router, b.Clients[0], b.Frontends[0], b.Frontends[1]
	ip := netip.MustParseAddr

	t.Run("topology", func(t *testing.T) {
		if r == nil || r.Name != "rt" || r.Addr != ip("192.0.2.254") || r.Addr6 != ip("2001:db8::254") ||
			b.ClientGateway != ip("198.51.100.254") || b.ClientGateway6 != ip("2001:db8:1::254") {
			t.Fatalf("router %+v, gateways %v %v", r, b.ClientGateway, b.ClientGateway6)
		}
		if hs := b.Hosts(); len(hs) != 6 || hs[1] != r || b.Host("rt") != r || b.HostByMAC(r.MAC) != r {
			t.Errorf("Hosts() = %v", hs)
		}
		if c1.Addr != ip("198.51.100.1") || c1.Addr6 != ip("2001:db8:1::1") || c1.Extra6[0] != ip("2001:db8:1::101") {
			t.Errorf("c1 addresses %v %v %v %v", c1.Addr, c1.Extra, c1.Addr6, c1.Extra6)
		}
		if f1.Addr != ip("192.0.2.11") || f1.Addr6 != ip("2001:db8::11") {
			t.Errorf("f1 addresses %v %v", f1.Addr, f1.Addr6)
		}
		mtuOf := func(h *Host, dev string) int {
			var m int
			if err := h.Do(func() error {
				ifi, err := net.InterfaceByName(dev)
				if err == nil {
					m = ifi.MTU
				}
				return err
			}); err != nil {
				t.Fatal(err)
			}
			return m
		}
		if m := mtuOf(r, "br1"); m != mtu {
			t.Errorf("router br1 MTU %d, want %d", m, mtu)
		}
		if m1, m2 := mtuOf(r, "eth0"), mtuOf(c1, "eth0"); m1 != MTU || m2 != MTU {
			t.Errorf("router eth0 MTU %d, c1 eth0 MTU %d, want %d", m1, m2, MTU)
		}
		for _, c := range b.Clients {
			out, err := r.RunIP("-j", "link", "show", c.Name)
			if err != nil || !strings.Contains(string(out), `"master":"br1"`) {
				t.Errorf("%s's port in the router: %s, %v", c.Name, out, err)
			}
			if _, err := b.Switch.RunIP("link", "show", c.Name); err == nil {
				t.Errorf("%s has a port on the switch", c.Name)
			}
		}
		for _, k := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
			if v, err := r.Sysctl(k); err != nil || v != "1" {
				t.Errorf("router %s = %q, %v", k, v, err)
			}
		}
	})

	const tcpPort = 8000
	for _, f := range b.Frontends {
		for _, a := range []netip.Addr{f.Addr, f.Addr6} {
			stop, err := f.ServeName(a, []uint16{tcpPort}, []uint16{5060})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(stop)
		}
	}

	t.Run("routed", func(t *testing.T) {
		for _, c := range b.Clients {
			for _, la := range []netip.Addr{c.Addr, c.Extra[0], c.Addr6, c.Extra6[0]} {
				for _, f := range b.Frontends {
					fa := f.Addr
					if la.Is6() {
						fa = f.Addr6
					}
					if name, err := c.AskName(la, netip.AddrPortFrom(fa, tcpPort)); err != nil || name != f.Name {
						t.Errorf("%s from %v to %v: %q, %v", c.Name, la, fa, name, err)
					}
					if name, err := c.UDPAsk(la, netip.AddrPortFrom(fa, 5060), 3000); err != nil || name != f.Name {
						t.Errorf("%s from %v to %v, 3000-byte datagram: %q, %v", c.Name, la, fa, name, err)
					}
				}
			}
		}
		// Clients resolve nothing on the switch: the router is their only neighbour.
		if _, err := c1.NDPResolve(f1.Addr6); !errors.Is(err, ErrTimeout) {
			t.Errorf("c1 resolved f1 across the router: %v", err)
		}
	})

	// Downloads from the frontends' real addresses: the router answers their
	// full-size packets with too-big messages, the frontends lower the path
	// MTU, the transfers finish.
	t.Run("path MTU", func(t *testing.T) {
		capt, err := f1.Capture("eth0")
		if err != nil {
			t.Fatal(err)
		}
		const size = 300_000
		var locals []netip.AddrPort
		for _, fa := range []netip.Addr{f1.Addr, f1.Addr6} {
			la := c1.Addr
			if fa.Is6() {
				la = c1.Addr6
			}
			local, err := c1.Download(la, netip.AddrPortFrom(fa, tcpPort), size)
			if err != nil {
				t.Fatalf("download from %v across MTU %d: %v", fa, mtu, err)
			}
			locals = append(locals, local)
		}
		time.Sleep(50 * time.Millisecond)
		st := capt.Stop()
		for i, fa := range []netip.Addr{f1.Addr, f1.Addr6} {
			var got []TooBig
			for _, tb := range st.TooBigs {
				if tb.To == fa {
					got = append(got, tb)
				}
			}
			if len(got) == 0 {
				t.Errorf("no too-big message to %v (all: %+v)", fa, st.TooBigs)
				continue
			}
			from := r.Addr
			if fa.Is6() {
				from = r.Addr6
			}
			tb := got[0]
			if tb.From != from || tb.MTU != mtu || tb.EthSrc.String() != r.MAC.String() || tb.EthDst.String() != f1.MAC.String() ||
				tb.QuotedSrc != netip.AddrPortFrom(fa, tcpPort) || tb.QuotedDst != locals[i] {
				t.Errorf("too-big message %+v, want from %v (%v) with MTU %d quoting %v->%v", tb, from, r.MAC, mtu, netip.AddrPortFrom(fa, tcpPort), locals[i])
			}
		}
	})

	// What a later test does with the balancer in between, with a static
	// neighbour on the router standing in for it: a DSR reply from the IPv6
	// VIP is too big, the router's Packet Too Big goes to the VIP, reaches
	// the frontend that sent the reply, and the transfer finishes.
	t.Run("packet too big for a VIP flow", func(t *testing.T) {
		vip6 := b.VIPs6[0]
		stop, err := f2.ServeName(vip6, []uint16{tcpPort}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		if _, err := r.RunIP("-6", "neigh", "replace", vip6.String(), "lladdr", f2.MAC.String(), "dev", "eth0", "nud", "permanent"); err != nil {
			t.Fatal(err)
		}
		capt, err := f2.Capture("eth0")
		if err != nil {
			t.Fatal(err)
		}
		local, err := c1.Download(c1.Extra6[0], netip.AddrPortFrom(vip6, tcpPort), 300_000)
		if err != nil {
			t.Fatalf("download from the VIP across MTU %d: %v", mtu, err)
		}
		time.Sleep(50 * time.Millisecond)
		st := capt.Stop()
		var ok bool
		for _, tb := range st.TooBigs {
			if tb.To == vip6 && tb.From == r.Addr6 && tb.MTU == mtu && tb.QuotedSrc == netip.AddrPortFrom(vip6, tcpPort) && tb.QuotedDst == local {
				ok = true
			}
		}
		if !ok {
			t.Errorf("no Packet Too Big for %v->%v reached f2: %+v", netip.AddrPortFrom(vip6, tcpPort), local, st.TooBigs)
		}
	})
}

func TestNewCleansUpOnFailureWithRouter(t *testing.T) {
	requireNetns(t)
	for _, role := range []string{"rt", "c1", "f1"} {
		t.Run(role, func(t *testing.T) {
			injected := fmt.Errorf("injected failure at %s", role)
			testHookAfterHost = func(r string) error {
				if r == role {
					return injected
				}
				return nil
			}
			defer func() { testHookAfterHost = nil }()
			b, err := New(Options{Clients: 1, Frontends: 1, Router: &RouterOptions{MTU: 1400}, Logf: t.Logf})
			if !errors.Is(err, injected) || b != nil {
				t.Fatalf("New = %v, %v; want the injected failure", b, err)
			}
			if left := ourNamespaces(t); len(left) != 0 {
				t.Errorf("failed New left namespaces behind: %v", left)
			}
		})
	}
}
