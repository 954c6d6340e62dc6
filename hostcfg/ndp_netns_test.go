package hostcfg

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/nstest"
	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The experiments of this file measure what Doctor relies on for IPv6 VIPs
// instead of assuming it from reading net/ipv6/ndisc.c: a frontend holding a
// VIP as /128 on lo must not answer neighbour solicitations (RFC 4861 section
// 7.2.3) for it on its LAN interface, the IPv6 counterpart of arp_ignore=1.
// Two namespaces are joined by a veth: "fe" (the frontend, 2001:db8::11 on
// eth0, the VIP 2001:db8::200/128 on lo put there by VIPsUp) and "cl" (a
// client, 2001:db8::1, ::101, ::102, ::103 on eth0). The client sends
// hand-made solicitations from an AF_PACKET socket, so neither its neighbour
// cache nor its kernel's retry logic is involved, and records every
// advertisement that comes back.

var (
	labVIP     = netip.MustParseAddr("2001:db8::200")
	labFE      = netip.MustParseAddr("2001:db8::11")
	labCL      = netip.MustParseAddr("2001:db8::1")
	labCLAll   = netip.MustParseAddr("2001:db8::101") // source of the NS to ff02::1
	labCLUni   = netip.MustParseAddr("2001:db8::102") // source of the unicast NS
	labCLFresh = netip.MustParseAddr("2001:db8::103") // never solicits: fe must resolve it
)

// ndpLab is the two-namespace set-up.
type ndpLab struct {
	fe, cl       *nstest.NS
	feMAC, clMAC net.HardwareAddr
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// newNDPLab builds fe and cl. feSysctls are written inside fe after the veth
// exists and before any address is added or a link is up; proxyEntry adds
// `ip -6 neigh add proxy VIP dev eth0` in fe.
func newNDPLab(t *testing.T, feSysctls [][2]string, proxyEntry bool) *ndpLab {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		e2e.Prereq(t, "iproute2's ip is not installed; the NDP namespace tests need it")
	}
	l := &ndpLab{}
	l.fe = nstest.New(t, "hostcfg")
	l.cl = nstest.New(t, "hostcfg")
	ipCmd(t, "-n", l.fe.Name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", l.cl.Name)
	if err := l.fe.Run(func() error {
		for _, kv := range feSysctls {
			if err := ProcSysctl().Set(kv[0], kv[1]); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	ipCmd(t, "-n", l.fe.Name, "link", "set", "lo", "up")
	ipCmd(t, "-n", l.cl.Name, "link", "set", "lo", "up")
	ipCmd(t, "-n", l.fe.Name, "addr", "add", labFE.String()+"/64", "dev", "eth0", "nodad")
	for _, a := range []netip.Addr{labCL, labCLAll, labCLUni, labCLFresh} {
		ipCmd(t, "-n", l.cl.Name, "addr", "add", a.String()+"/64", "dev", "eth0", "nodad")
	}
	// The VIP goes on lo exactly as `l2lb vip up` puts it there.
	h, err := netlink.NewHandleAt(l.fe.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if got, err := VIPsUp(NetlinkAddrsAt(h), []netip.Addr{labVIP}); err != nil || !slices.Equal(got, []Change{{labVIP, "add"}}) {
		t.Fatalf("VIPsUp in fe = %v, %v", got, err)
	}
	if proxyEntry {
		ipCmd(t, "-n", l.fe.Name, "-6", "neigh", "add", "proxy", labVIP.String(), "dev", "eth0")
	}
	ipCmd(t, "-n", l.fe.Name, "link", "set", "eth0", "up")
	ipCmd(t, "-n", l.cl.Name, "link", "set", "eth0", "up")
	for _, side := range []struct {
		ns  *nstest.NS
		mac *net.HardwareAddr
	}{{l.fe, &l.feMAC}, {l.cl, &l.clMAC}} {
		if err := side.ns.Run(func() error {
			ifi, err := net.InterfaceByName("eth0")
			if err == nil {
				*side.mac = ifi.HardwareAddr
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

// solicitedNode returns the solicited-node multicast address of a (RFC 4291
// section 2.7.1) and its Ethernet group address (RFC 2464 section 7).
func solicitedNode(a netip.Addr) (netip.Addr, net.HardwareAddr) {
	b := a.As16()
	g := netip.AddrFrom16([16]byte{0xff, 0x02, 10: 0, 11: 0x01, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]})
	return g, multicastMAC(g)
}

func multicastMAC(g netip.Addr) net.HardwareAddr {
	b := g.As16()
	return net.HardwareAddr{0x33, 0x33, b[12], b[13], b[14], b[15]}
}

// nsFrame builds an Ethernet/IPv6/ICMPv6 neighbour solicitation for target
// from src with a source link-layer address option (RFC 4861 section 4.3).
func nsFrame(t *testing.T, srcMAC, dstMAC net.HardwareAddr, src, dst, target netip.Addr) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv6}
	ip6 := &layers.IPv6{Version: 6, HopLimit: 255, NextHeader: layers.IPProtocolICMPv6,
		SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeNeighborSolicitation, 0)}
	if err := icmp.SetNetworkLayerForChecksum(ip6); err != nil {
		t.Fatal(err)
	}
	ns := &layers.ICMPv6NeighborSolicitation{TargetAddress: target.AsSlice(),
		Options: layers.ICMPv6Options{{Type: layers.ICMPv6OptSourceAddress, Data: srcMAC}}}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip6, icmp, ns); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// ndMsg is one neighbour discovery message seen by the client.
type ndMsg struct {
	Type             layers.ICMPv6TypeCode
	Src, Dst, Target netip.Addr
	EthSrc           net.HardwareAddr
	LLAddr           net.HardwareAddr // target (NA) or source (NS) link-layer address option
	R, S, O          bool             // NA flags
}

func (m ndMsg) String() string {
	if m.Type.Type() == layers.ICMPv6TypeNeighborSolicitation {
		return fmt.Sprintf("NS %v->%v target %v SLLAO %v (eth src %v)", m.Src, m.Dst, m.Target, m.LLAddr, m.EthSrc)
	}
	var f []string
	for _, x := range []struct {
		on   bool
		name string
	}{{m.R, "R"}, {m.S, "S"}, {m.O, "O"}} {
		if x.on {
			f = append(f, x.name)
		}
	}
	return fmt.Sprintf("NA %v->%v target %v flags [%s] TLLAO %v (eth src %v)", m.Src, m.Dst, m.Target, strings.Join(f, ","), m.LLAddr, m.EthSrc)
}

// parseND decodes a neighbour solicitation or advertisement, or returns false.
func parseND(frame []byte) (ndMsg, bool) {
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.DecodeOptions{NoCopy: true, Lazy: true})
	eth, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	ip6, _ := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
	icmp, _ := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
	if eth == nil || ip6 == nil || icmp == nil {
		return ndMsg{}, false
	}
	m := ndMsg{Type: icmp.TypeCode, EthSrc: slices.Clone(eth.SrcMAC)}
	m.Src, _ = netip.AddrFromSlice(ip6.SrcIP)
	m.Dst, _ = netip.AddrFromSlice(ip6.DstIP)
	switch icmp.TypeCode.Type() {
	case layers.ICMPv6TypeNeighborAdvertisement:
		na, _ := p.Layer(layers.LayerTypeICMPv6NeighborAdvertisement).(*layers.ICMPv6NeighborAdvertisement)
		if na == nil {
			return ndMsg{}, false
		}
		m.Target, _ = netip.AddrFromSlice(na.TargetAddress)
		m.R, m.S, m.O = na.Router(), na.Solicited(), na.Override()
		for _, o := range na.Options {
			if o.Type == layers.ICMPv6OptTargetAddress {
				m.LLAddr = slices.Clone(net.HardwareAddr(o.Data))
			}
		}
	case layers.ICMPv6TypeNeighborSolicitation:
		ns, _ := p.Layer(layers.LayerTypeICMPv6NeighborSolicitation).(*layers.ICMPv6NeighborSolicitation)
		if ns == nil {
			return ndMsg{}, false
		}
		m.Target, _ = netip.AddrFromSlice(ns.TargetAddress)
		for _, o := range ns.Options {
			if o.Type == layers.ICMPv6OptSourceAddress {
				m.LLAddr = slices.Clone(net.HardwareAddr(o.Data))
			}
		}
	default:
		return ndMsg{}, false
	}
	return m, true
}

// listenND opens an AF_PACKET socket on cl's eth0 for IPv6 frames.
func (l *ndpLab) listenND(t *testing.T) *packet.Conn {
	t.Helper()
	var c *packet.Conn
	if err := l.cl.Run(func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		c, err = packet.Listen(ifi, packet.Raw, unix.ETH_P_IPV6, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// collect reads neighbour discovery messages from c until the deadline.
func collect(t *testing.T, c *packet.Conn, until time.Time) []ndMsg {
	t.Helper()
	var out []ndMsg
	buf := make([]byte, 2048)
	if err := c.SetReadDeadline(until); err != nil {
		t.Fatal(err)
	}
	for {
		n, _, err := c.ReadFrom(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if m, ok := parseND(buf[:n]); ok {
			out = append(out, m)
		}
	}
}

// probe is one way of asking for a target.
type probe struct {
	name string
	src  netip.Addr // distinct per probe, so an answer's destination names the probe
	dst  func(target netip.Addr) (netip.Addr, net.HardwareAddr)
}

func (l *ndpLab) probes() []probe {
	return []probe{
		{"solicited-node multicast", labCL, solicitedNode},
		{"all-nodes multicast ff02::1", labCLAll, func(netip.Addr) (netip.Addr, net.HardwareAddr) {
			g := netip.MustParseAddr("ff02::1")
			return g, multicastMAC(g)
		}},
		// What neighbour unreachability detection sends (RFC 4861 section
		// 7.3.1), and the frame a client would send if it had somehow
		// learnt the frontend's MAC for the VIP: it passes the multicast
		// filter, so only ndisc_recv_ns decides.
		{"unicast to fe's MAC, IPv6 dst = target", labCLUni, func(target netip.Addr) (netip.Addr, net.HardwareAddr) {
			return target, l.feMAC
		}},
	}
}

// answers is, per target and probe name, the advertisements received.
type answers map[netip.Addr]map[string][]ndMsg

// solicit sends every probe for every target three times, 300 ms apart, and
// collects for window after the first send (the kernel delays proxied answers
// to multicast solicitations by up to proxy_delay, 0.8 s by default).
func (l *ndpLab) solicit(t *testing.T, window time.Duration, targets ...netip.Addr) answers {
	t.Helper()
	c := l.listenND(t)
	start := time.Now()
	ps := l.probes()
	for round := 0; round < 3; round++ {
		for _, target := range targets {
			for _, p := range ps {
				dst, dmac := p.dst(target)
				if _, err := c.WriteTo(nsFrame(t, l.clMAC, dmac, p.src, dst, target), &packet.Addr{HardwareAddr: dmac}); err != nil {
					t.Fatal(err)
				}
			}
		}
		time.Sleep(300 * time.Millisecond)
	}
	got := answers{}
	for _, target := range targets {
		got[target] = map[string][]ndMsg{}
	}
	for _, m := range collect(t, c, start.Add(window)) {
		if m.Type.Type() != layers.ICMPv6TypeNeighborAdvertisement || got[m.Target] == nil {
			continue
		}
		for _, p := range ps {
			if m.Dst == p.src {
				got[m.Target][p.name] = append(got[m.Target][p.name], m)
			}
		}
	}
	return got
}

// TestFrontendIgnoresNSForLoVIP is the measurement behind Doctor's IPv6
// checks. For each frontend configuration it sends neighbour solicitations
// for the VIP (on fe's lo) and, as a control, for fe's own eth0 address, three
// ways each (solicited-node multicast, all-nodes multicast, unicast to fe's
// MAC), and records what comes back. It fails if a frontend answers for its lo
// VIP in a configuration Doctor passes, if Doctor passes the configuration
// that does answer, or if a control goes unanswered (then the measurement
// itself is broken).
//
// Measured on Linux 6.18 (veth; run with -v for the table): no advertisement
// for the VIP with default sysctls, with net.ipv6.conf.{all,eth0}.proxy_ndp=1
// alone, with net.ipv6.conf.all.forwarding=1 alone, with forwarding and
// proxy_ndp both on, and with proxy_ndp plus a proxy entry but forwarding off;
// an advertisement for every probe only with forwarding=1, proxy_ndp=1 and a
// proxy entry for the VIP on eth0 (`ip -6 neigh add proxy VIP dev eth0`). The
// control is answered in every configuration.
func TestFrontendIgnoresNSForLoVIP(t *testing.T) {
	t.Parallel()
	configs := []struct {
		name    string
		sysctls [][2]string
		proxy   bool
		answers bool // the frontend answers for its lo VIP
	}{
		{"default sysctls", nil, false, false},
		{"all.proxy_ndp=1", [][2]string{{"net.ipv6.conf.all.proxy_ndp", "1"}}, false, false},
		{"eth0.proxy_ndp=1", [][2]string{{"net.ipv6.conf.eth0.proxy_ndp", "1"}}, false, false},
		{"all.forwarding=1", [][2]string{{"net.ipv6.conf.all.forwarding", "1"}}, false, false},
		{"lo.proxy_ndp=1 lo.forwarding=1", [][2]string{{"net.ipv6.conf.lo.forwarding", "1"}, {"net.ipv6.conf.lo.proxy_ndp", "1"}}, false, false},
		{"all.forwarding=1 all.proxy_ndp=1, no proxy entry",
			[][2]string{{"net.ipv6.conf.all.forwarding", "1"}, {"net.ipv6.conf.all.proxy_ndp", "1"}}, false, false},
		{"eth0.proxy_ndp=1 + proxy entry, forwarding=0", [][2]string{{"net.ipv6.conf.eth0.proxy_ndp", "1"}}, true, false},
		{"all.forwarding=1 eth0.proxy_ndp=1 + proxy entry",
			[][2]string{{"net.ipv6.conf.all.forwarding", "1"}, {"net.ipv6.conf.eth0.proxy_ndp", "1"}}, true, true},
		{"all.forwarding=1 all.proxy_ndp=1 + proxy entry",
			[][2]string{{"net.ipv6.conf.all.forwarding", "1"}, {"net.ipv6.conf.all.proxy_ndp", "1"}}, true, true},
	}
	for _, cfg := range configs {
		t.Run(cfg.name, func(t *testing.T) {
			t.Parallel()
			l := newNDPLab(t, cfg.sysctls, cfg.proxy)
			got := l.solicit(t, 1500*time.Millisecond, labVIP, labFE)
			for _, p := range l.probes() {
				vip, ctl := got[labVIP][p.name], got[labFE][p.name]
				t.Logf("%s | NS for VIP %v via %s: %d NA %v | control NS for %v: %d NA",
					cfg.name, labVIP, p.name, len(vip), vip, labFE, len(ctl))
				if len(ctl) == 0 {
					t.Errorf("%s: no advertisement for fe's own %v: the measurement does not work", p.name, labFE)
				}
				for _, m := range ctl {
					// The answer to a unicast solicitation may omit the
					// target link-layer address (RFC 4861 section
					// 7.2.4), and Linux does.
					if (m.LLAddr != nil && m.LLAddr.String() != l.feMAC.String()) || m.EthSrc.String() != l.feMAC.String() || !m.S {
						t.Errorf("%s: control answer %v, want solicited, from fe's MAC %v", p.name, m, l.feMAC)
					}
				}
				switch {
				case cfg.answers && len(vip) == 0:
					t.Errorf("%s: no advertisement for the proxied VIP: the measurement cannot see an answer", p.name)
				case !cfg.answers && len(vip) > 0:
					t.Errorf("%s: the frontend answers neighbour solicitations for its lo VIP %v: %v", p.name, labVIP, vip)
				}
			}
			// Doctor must reject every configuration that answers, and pass
			// the default one.
			var fs []Finding
			if err := l.fe.Run(func() error {
				fs = Doctor(ProcSysctl(), NetlinkAddrs(), DoctorInput{Iface: "eth0", VIPs: []netip.Addr{labVIP}})
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			var v6bad []Finding
			for _, f := range failed(fs) {
				if f.Check == CheckProxyNDP || f.Check == CheckDisableIPv6 || f.Check == CheckVIPOnLo {
					v6bad = append(v6bad, f)
				}
			}
			if cfg.answers && len(v6bad) == 0 {
				t.Errorf("Doctor passes a frontend that answers for its VIP: %v", fs)
			}
			if len(cfg.sysctls) == 0 && len(v6bad) != 0 {
				t.Errorf("Doctor fails IPv6 checks on default sysctls: %v", v6bad)
			}
			t.Logf("%s | doctor: %v", cfg.name, v6bad)
		})
	}
}

// TestFrontendSolicitsFromOwnAddress measures the IPv6 counterpart of
// arp_announce=2: when the frontend answers a client from the VIP and must
// resolve the client's MAC first, its solicitation must not carry the VIP as
// source (a client would then cache VIP -> the frontend's MAC, bypassing the
// balancer). ndisc_solicit uses the packet's source only if it is an address
// of the outgoing device (eth0), so a VIP on lo never is; no sysctl changes
// that, so Doctor has nothing to check. Measured: the NS comes from fe's
// link-local address.
func TestFrontendSolicitsFromOwnAddress(t *testing.T) {
	t.Parallel()
	l := newNDPLab(t, nil, false)
	// Wait until fe's link-local address has finished DAD: until then the
	// kernel has no source for a solicitation at all.
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := exec.Command("ip", "-n", l.fe.Name, "-6", "addr", "show", "dev", "eth0", "scope", "link", "tentative").Output()
		if err != nil {
			t.Fatal(err)
		}
		if len(strings.TrimSpace(string(out))) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fe's link-local address still tentative: %s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	c := l.listenND(t)
	if err := l.fe.Run(func() error {
		u, err := net.DialUDP("udp6", net.UDPAddrFromAddrPort(netip.AddrPortFrom(labVIP, 5060)),
			net.UDPAddrFromAddrPort(netip.AddrPortFrom(labCLFresh, 9)))
		if err != nil {
			return err
		}
		defer u.Close()
		_, err = u.Write([]byte("reply from the VIP"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var seen []ndMsg
	for _, m := range collect(t, c, time.Now().Add(1500*time.Millisecond)) {
		if m.Type.Type() == layers.ICMPv6TypeNeighborSolicitation && m.Target == labCLFresh {
			seen = append(seen, m)
		}
	}
	t.Logf("fe resolving %v for a datagram from the VIP sent: %v", labCLFresh, seen)
	if len(seen) == 0 {
		t.Fatalf("fe sent no solicitation for %v", labCLFresh)
	}
	for _, m := range seen {
		if m.Src == labVIP {
			t.Errorf("fe solicits with the VIP as source: %v", m)
		}
		if !m.Src.IsLinkLocalUnicast() && m.Src != labFE {
			t.Errorf("solicitation source %v is neither fe's link-local nor its eth0 address", m.Src)
		}
	}
}

// TestLoopbackDoesNoDAD verifies that accept_dad does not matter on lo: an
// IPv6 address added to lo without nodad, with accept_dad=1 on all, default
// and lo, is usable as soon as the DAD work item has run (addrconf_dad_begin
// skips IFF_LOOPBACK devices without probing), while the same on a veth with
// carrier stays tentative, and bind fails, for the second or more that DAD takes
// (RetransTimer, RFC 4861 section 10). The work item runs asynchronously
// (addrconf_dad_start schedules it), so for a moment after the add even the
// lo address is tentative: a loaded CI machine saw it. VIPsUp adds
// IFA_F_NODAD, with which the address is never tentative.
func TestLoopbackDoesNoDAD(t *testing.T) {
	t.Parallel()
	l := newNDPLab(t, [][2]string{
		{"net.ipv6.conf.all.accept_dad", "1"}, {"net.ipv6.conf.default.accept_dad", "1"},
		{"net.ipv6.conf.lo.accept_dad", "1"}, {"net.ipv6.conf.eth0.accept_dad", "1"},
	}, false)
	h, err := netlink.NewHandleAt(l.fe.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	flagsOf := func(dev string, a netip.Addr) (int, bool) {
		link, err := h.LinkByName(dev)
		if err != nil {
			t.Fatal(err)
		}
		list, err := h.AddrList(link, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range list {
			if y, ok := netip.AddrFromSlice(x.IP); ok && y == a {
				return x.Flags, true
			}
		}
		return 0, false
	}
	bindErr := func(a netip.Addr) error {
		return l.fe.Run(func() error {
			u, err := net.ListenUDP("udp6", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 0)))
			if err == nil {
				u.Close()
			}
			return err
		})
	}
	// The VIP VIPsUp added carries NODAD.
	if f, ok := flagsOf("lo", labVIP); !ok || f&unix.IFA_F_NODAD == 0 || f&unix.IFA_F_TENTATIVE != 0 {
		t.Errorf("VIP on lo: flags %#x (present %v), want NODAD and not TENTATIVE", f, ok)
	}
	plain, onEth := netip.MustParseAddr("2001:db8::201"), netip.MustParseAddr("2001:db8::12")
	ipCmd(t, "-n", l.fe.Name, "addr", "add", plain.String()+"/128", "dev", "lo") // no nodad
	ipCmd(t, "-n", l.fe.Name, "addr", "add", onEth.String()+"/64", "dev", "eth0")
	var loFlags int
	var loBind error
	// 500 ms: far less than eth0's DAD, which lasts a RetransTimer of 1 s at least.
	for deadline := time.Now().Add(500 * time.Millisecond); ; time.Sleep(5 * time.Millisecond) {
		loFlags, _ = flagsOf("lo", plain)
		loBind = bindErr(plain)
		if loFlags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) == 0 && loBind == nil || time.Now().After(deadline) {
			break
		}
	}
	ethFlags, _ := flagsOf("eth0", onEth)
	ethBind := bindErr(onEth)
	t.Logf("accept_dad=1 everywhere: %v/128 on lo without nodad: flags %#x, bind: %v; %v/64 on eth0: flags %#x, bind: %v",
		plain, loFlags, loBind, onEth, ethFlags, ethBind)
	if loFlags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 || loBind != nil {
		t.Errorf("address on lo without nodad: flags %#x, bind %v; want usable within 500 ms", loFlags, loBind)
	}
	if ethFlags&unix.IFA_F_TENTATIVE == 0 || !errors.Is(ethBind, syscall.EADDRNOTAVAIL) {
		t.Errorf("control on eth0: flags %#x, bind %v; want TENTATIVE and EADDRNOTAVAIL (else this test cannot see DAD)", ethFlags, ethBind)
	}
	if v, err := func() (v string, err error) {
		err = l.fe.Run(func() error { v, err = ProcSysctl().Get("net.ipv6.conf.lo.accept_dad"); return err })
		return v, err
	}(); err != nil || v != "1" {
		t.Errorf("lo accept_dad = %q, %v; the test meant to run with 1", v, err)
	}
}

// TestDisableIPv6OnLo measures what disable_ipv6=1 on lo does to IPv6 VIPs:
// the kernel refuses the address (and removes those present when it is set),
// Doctor reports it, and Apply's fix makes VIPsUp work.
func TestDisableIPv6OnLo(t *testing.T) {
	t.Parallel()
	ns := nstest.New(t, "hostcfg")
	h, err := netlink.NewHandleAt(ns.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	m := NetlinkAddrsAt(h)
	vips := []netip.Addr{labVIP, netip.MustParseAddr("192.0.2.200")}
	if _, err := VIPsUp(m, vips); err != nil {
		t.Fatal(err)
	}
	var upErr error
	var before, after []Finding
	var listed []netip.Prefix
	err = ns.Run(func() error {
		if err := ProcSysctl().Set("net.ipv6.conf.lo.disable_ipv6", "1"); err != nil {
			return err
		}
		var err error
		if listed, err = NetlinkAddrs().List("lo"); err != nil {
			return err
		}
		_, upErr = VIPsUp(NetlinkAddrs(), vips)
		before = Doctor(ProcSysctl(), NetlinkAddrs(), DoctorInput{Iface: "lo", VIPs: vips})
		if err := Apply(before); err != nil {
			return err
		}
		after = Doctor(ProcSysctl(), NetlinkAddrs(), DoctorInput{Iface: "lo", VIPs: vips})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("lo with disable_ipv6=1: addresses %v; VIPsUp: %v", listed, upErr)
	if hasPrefix(listed, labVIP.String()+"/128") {
		t.Errorf("IPv6 VIP still on lo after disable_ipv6=1: %v", listed)
	}
	if upErr == nil {
		t.Errorf("VIPsUp of an IPv6 VIP on lo with disable_ipv6=1 succeeded")
	}
	if f := byKey(t, before, CheckDisableIPv6, "net.ipv6.conf.lo.disable_ipv6"); f.OK || f.Fix != "sysctl -w net.ipv6.conf.lo.disable_ipv6=0" {
		t.Errorf("disable_ipv6 finding %+v", f)
	}
	if f := byKey(t, before, CheckVIPOnLo, labVIP.String()+"/128"); f.OK || f.Fix != "ip address add 2001:db8::200/128 dev lo nodad" {
		t.Errorf("vip_on_lo finding %+v", f)
	}
	if bad := failed(after); len(bad) != 0 {
		t.Errorf("failures after Apply: %v", bad)
	}
}
