package dataplane

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/l2lb/l2lb/conntrack"
	"github.com/l2lb/l2lb/vipset"
	"github.com/mdlayher/ndp"
)

// IPv6 test addresses: the documentation prefix only (RFC 3849).
var (
	vip6    = netip.MustParseAddr("2001:db8::200")
	client6 = netip.MustParseAddr("2001:db8:100::1")
	router6 = netip.MustParseAddr("2001:db8:100::fe")
)

// frame6 describes an IPv6 test frame.
type frame6 struct {
	dstMAC   net.HardwareAddr
	src, dst netip.Addr
	proto    layers.IPProtocol
	sport    uint16
	dport    uint16
	syn, ack bool
	payload  []byte
	// ext are extension headers (layers.IPProtocol values) put before the upper layer.
	ext []layers.IPProtocol
	// frag adds a Fragment header with this offset (in 8-byte units), M flag and ID.
	frag         bool
	fragOff      uint16
	more         bool
	fragID       uint32
	hopLimit     uint8
	rawTransport []byte // raw upper-layer bytes instead of a TCP/UDP header
}

func (s frame6) bytes(t testing.TB) []byte {
	t.Helper()
	if s.dstMAC == nil {
		s.dstMAC = vmacT
	}
	if s.proto == 0 {
		s.proto = layers.IPProtocolTCP
	}
	if s.hopLimit == 0 {
		s.hopLimit = 64
	}
	// The upper layer first, so that its checksum covers the real addresses.
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	ip := &layers.IPv6{Version: 6, HopLimit: s.hopLimit, SrcIP: s.src.AsSlice(), DstIP: s.dst.AsSlice(), NextHeader: s.proto}
	l4 := gopacket.NewSerializeBuffer()
	switch {
	case s.rawTransport != nil:
		l4.AppendBytes(len(s.rawTransport))
		copy(l4.Bytes(), s.rawTransport)
	case s.proto == layers.IPProtocolTCP:
		tcp := &layers.TCP{SrcPort: layers.TCPPort(s.sport), DstPort: layers.TCPPort(s.dport), SYN: s.syn, ACK: s.ack, Window: 1000}
		tcp.SetNetworkLayerForChecksum(ip)
		if err := gopacket.SerializeLayers(l4, opts, tcp, gopacket.Payload(s.payload)); err != nil {
			t.Fatal(err)
		}
	case s.proto == layers.IPProtocolUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(s.sport), DstPort: layers.UDPPort(s.dport)}
		udp.SetNetworkLayerForChecksum(ip)
		if err := gopacket.SerializeLayers(l4, opts, udp, gopacket.Payload(s.payload)); err != nil {
			t.Fatal(err)
		}
	default:
		l4.AppendBytes(len(s.payload))
		copy(l4.Bytes(), s.payload)
	}
	upper := l4.Bytes()
	// Extension headers, each 8 bytes (Fragment) or 8 bytes of padding options.
	var chain []byte
	nh := s.proto
	if s.frag {
		h := make([]byte, 8)
		h[0] = byte(nh)
		binary.BigEndian.PutUint16(h[2:4], s.fragOff<<3)
		if s.more {
			h[3] |= 1
		}
		binary.BigEndian.PutUint32(h[4:8], s.fragID)
		chain, nh = h, layers.IPProtocolIPv6Fragment
		if s.fragOff != 0 {
			upper = s.payload
		}
	}
	for i := len(s.ext) - 1; i >= 0; i-- {
		h := make([]byte, 8)
		h[0], h[1] = byte(nh), 0
		h[2], h[3] = 1, 4 // a PadN option filling the header (RFC 8200 §4.2)
		chain, nh = append(h, chain...), s.ext[i]
	}
	pkt := make([]byte, 14+40+len(chain)+len(upper))
	copy(pkt[0:6], s.dstMAC)
	copy(pkt[6:12], clentMAC)
	binary.BigEndian.PutUint16(pkt[12:14], etherTypeIPv6)
	h := pkt[14:]
	h[0] = 6 << 4
	binary.BigEndian.PutUint16(h[4:6], uint16(len(chain)+len(upper)))
	h[6], h[7] = byte(nh), s.hopLimit
	sa, da := s.src.As16(), s.dst.As16()
	copy(h[8:24], sa[:])
	copy(h[24:40], da[:])
	copy(h[40:], chain)
	copy(h[40+len(chain):], upper)
	return pkt
}

func newTestEngine6(t testing.TB, opts ...engineOpt) *Engine {
	return newTestEngine(t, append([]engineOpt{func(c *Config, _ *conntrack.Config) {
		c.VIPs = vipset.New(vip, vip6)
	}}, opts...)...)
}

func TestForward6RewritesOnlyMACs(t *testing.T) {
	e := newTestEngine6(t)
	seen := map[netip.Addr]int{}
	for i := 0; i < 300; i++ {
		f := frame6{src: client6, dst: vip6, sport: uint16(1000 + i), dport: 25, syn: true}.bytes(t)
		in := append([]byte(nil), f...)
		r := process(e, f)
		if r.Verdict != VerdictForward && r.Verdict != VerdictLocal {
			t.Fatalf("frame %d: %v %v", i, r.Verdict, r.Reason)
		}
		if !r.NewFlow {
			t.Fatalf("frame %d is no new flow", i)
		}
		if !bytes.Equal(f[12:], in[12:]) {
			t.Fatalf("frame %d: bytes after the Ethernet addresses changed", i)
		}
		seen[ownerOf(t, e, r)]++
		if r.Verdict == VerdictForward && !bytes.Equal(f[6:12], ourMAC) {
			t.Fatalf("source MAC %v, want ours", net.HardwareAddr(f[6:12]))
		}
		// The flow sticks.
		again := frame6{src: client6, dst: vip6, sport: uint16(1000 + i), dport: 25, ack: true}.bytes(t)
		r2 := process(e, again)
		if r2.NewFlow || r2.Member != r.Member {
			t.Fatalf("frame %d: the flow moved from %d to %d", i, r.Member, r2.Member)
		}
	}
	for _, a := range []netip.Addr{f1Addr, f2Addr, f3Addr} {
		if seen[a] < 60 {
			t.Errorf("IPv6 flows per member %v: %d to %v", seen, seen[a], a)
		}
	}
	if st := e.VIPStats()[vip6]; st.Packets != 600 {
		t.Errorf("IPv6 VIP counted %d packets, want 600", st.Packets)
	}
}

func TestNDPSolicitationAnswered(t *testing.T) {
	e := newTestEngine6(t)
	ns := &ndp.NeighborSolicitation{TargetAddress: vip6,
		Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Source, Addr: clentMAC}}}
	body, err := ndp.MarshalMessageChecksum(ns, client6, netip.MustParseAddr("ff02::1:ff00:200"))
	if err != nil {
		t.Fatal(err)
	}
	f := frame6{dstMAC: SolicitedNodeMAC(vip6), src: client6, dst: netip.MustParseAddr("ff02::1:ff00:200"),
		proto: layers.IPProtocolICMPv6, rawTransport: body, hopLimit: 255}.bytes(t)
	r := process(e, f)
	if r.Verdict != VerdictNDPReply {
		t.Fatalf("NS for the VIP: %v %v, want an NDP reply", r.Verdict, r.Reason)
	}
	var p Packet6
	if rr := ParseIPv6(r.Reply, &p); rr != ReasonNone || p.Proto != nhICMPv6 || p.ICMPType != icmp6NeighAdvert ||
		p.HopLimit != 255 {
		t.Fatalf("reply %x: %v %+v", r.Reply, rr, p)
	}
	if !bytes.Equal(r.Reply[0:6], clentMAC) || !bytes.Equal(r.Reply[6:12], vmacT) ||
		netip.AddrFrom16(p.Src) != vip6 || netip.AddrFrom16(p.Dst) != client6 {
		t.Fatalf("reply addresses: eth %v<-%v ip %v<-%v", net.HardwareAddr(r.Reply[0:6]), net.HardwareAddr(r.Reply[6:12]),
			netip.AddrFrom16(p.Dst), netip.AddrFrom16(p.Src))
	}
	m, err := ndp.ParseMessage(r.Reply[p.L4:])
	na, ok := m.(*ndp.NeighborAdvertisement)
	if err != nil || !ok || na.TargetAddress != vip6 || !na.Solicited || !na.Override || na.Router {
		t.Fatalf("advertisement %+v (%v)", m, err)
	}
	tlla := false
	for _, o := range na.Options {
		if l, ok := o.(*ndp.LinkLayerAddress); ok && l.Direction == ndp.Target && bytes.Equal(l.Addr, vmacT) {
			tlla = true
		}
	}
	if !tlla {
		t.Error("the advertisement carries no target link-layer address with the virtual MAC")
	}
	// gopacket agrees about the checksum.
	pkt := gopacket.NewPacket(r.Reply, layers.LayerTypeEthernet, gopacket.Default)
	if icmp, ok := pkt.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6); !ok || icmp.TypeCode.Type() != layers.ICMPv6TypeNeighborAdvertisement {
		t.Fatalf("gopacket sees no NA: %v", pkt)
	}
	// Hop limit other than 255: not from the link (RFC 4861 §7.1.1).
	bad := frame6{dstMAC: SolicitedNodeMAC(vip6), src: client6, dst: netip.MustParseAddr("ff02::1:ff00:200"),
		proto: layers.IPProtocolICMPv6, rawTransport: body, hopLimit: 64}.bytes(t)
	if r := process(e, bad); r.Verdict != VerdictDrop || r.Reason != ReasonNDPMalformed {
		t.Errorf("NS with hop limit 64: %v %v", r.Verdict, r.Reason)
	}
	// Another target: left alone. Standby: not answered.
	other, _ := ndp.MarshalMessageChecksum(&ndp.NeighborSolicitation{TargetAddress: client6}, router6, client6)
	if r := process(e, frame6{dstMAC: SolicitedNodeMAC(client6), src: router6, dst: client6, proto: layers.IPProtocolICMPv6,
		rawTransport: other, hopLimit: 255}.bytes(t)); r.Verdict != VerdictIgnored {
		t.Errorf("NS for another address: %v %v", r.Verdict, r.Reason)
	}
	e.SetActive(false)
	if r := process(e, f); r.Verdict != VerdictIgnored {
		t.Errorf("NS while standby: %v %v", r.Verdict, r.Reason)
	}
}

func TestNDPAdvertisementConflict(t *testing.T) {
	e := newTestEngine6(t)
	other := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}
	na := &ndp.NeighborAdvertisement{Override: true, TargetAddress: vip6,
		Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: other}}}
	body, err := ndp.MarshalMessageChecksum(na, vip6, allNodes)
	if err != nil {
		t.Fatal(err)
	}
	f := frame6{dstMAC: allNodesMAC, src: vip6, dst: allNodes, proto: layers.IPProtocolICMPv6, rawTransport: body,
		hopLimit: 255}.bytes(t)
	r := process(e, f)
	if r.Verdict != VerdictIgnored || !r.Conflict {
		t.Fatalf("NA claiming our VIP: %v conflict=%v", r.Verdict, r.Conflict)
	}
	v, mac, split, ok := Conflict(f, vmacT)
	if !ok || v != vip6 || !bytes.Equal(mac, other) || split {
		t.Errorf("Conflict: %v %v split=%v ok=%v", v, mac, split, ok)
	}
}

func TestAnnouncements6(t *testing.T) {
	frames := Announcements6(vmacT, []netip.Addr{vip, vip6})
	if len(frames) != 1 {
		t.Fatalf("%d frames for one IPv6 VIP (and one IPv4, skipped)", len(frames))
	}
	var p Packet6
	if r := ParseIPv6(frames[0], &p); r != ReasonNone || netip.AddrFrom16(p.Dst) != allNodes || p.HopLimit != 255 {
		t.Fatalf("announcement: %v %+v", r, p)
	}
	m, err := ndp.ParseMessage(frames[0][p.L4:])
	if na, ok := m.(*ndp.NeighborAdvertisement); err != nil || !ok || !na.Override || na.Solicited || na.TargetAddress != vip6 {
		t.Fatalf("announcement message %+v (%v)", m, err)
	}
	if !bytes.Equal(frames[0][0:6], allNodesMAC) || !bytes.Equal(frames[0][6:12], vmacT) {
		t.Error("announcement Ethernet addresses")
	}
}

func TestFragments6FollowFirst(t *testing.T) {
	e := newTestEngine6(t)
	first := frame6{src: client6, dst: vip6, proto: layers.IPProtocolUDP, sport: 5060, dport: 5060, frag: true, more: true,
		fragID: 77, payload: make([]byte, 1200)}.bytes(t)
	r1 := process(e, first)
	if r1.Verdict != VerdictForward && r1.Verdict != VerdictLocal {
		t.Fatalf("first fragment: %v %v", r1.Verdict, r1.Reason)
	}
	rest := frame6{src: client6, dst: vip6, proto: layers.IPProtocolUDP, frag: true, fragOff: 151, fragID: 77,
		payload: make([]byte, 800)}.bytes(t)
	r2 := process(e, rest)
	if r2.Verdict != r1.Verdict || r2.Member != r1.Member {
		t.Fatalf("second fragment went to %d (%v), first to %d", r2.Member, r2.Verdict, r1.Member)
	}
	orphan := frame6{src: client6, dst: vip6, proto: layers.IPProtocolUDP, frag: true, fragOff: 151, fragID: 78,
		payload: make([]byte, 800)}.bytes(t)
	if r := process(e, orphan); r.Verdict != VerdictDrop || r.Reason != ReasonFragmentUnknown {
		t.Errorf("fragment without a first: %v %v", r.Verdict, r.Reason)
	}
}

// TestPacketTooBigReachesOwner: an ICMPv6 Packet Too Big from a router on the client side,
// quoting a frontend's packet from the VIP, goes to the frontend that owns the flow, so path MTU
// discovery works through the VIP (RFC 8201).
func TestPacketTooBigReachesOwner(t *testing.T) {
	e := newTestEngine6(t)
	var owners []uint32
	for i := 0; i < 30; i++ {
		r := process(e, frame6{src: client6, dst: vip6, sport: uint16(2000 + i), dport: 80, syn: true}.bytes(t))
		owners = append(owners, r.Member)
	}
	for i, want := range owners {
		// The frontend's reply: VIP:80 -> client:port, quoted (as much as fits: header and 8 bytes).
		quoted := frame6{src: vip6, dst: client6, sport: 80, dport: uint16(2000 + i), ack: true,
			payload: make([]byte, 1400)}.bytes(t)[14:][:48]
		msg := make([]byte, 8+len(quoted))
		msg[0] = icmp6PacketTooBig
		binary.BigEndian.PutUint32(msg[4:8], 1280)
		copy(msg[8:], quoted)
		f := frame6{src: router6, dst: vip6, proto: layers.IPProtocolICMPv6, rawTransport: msg}.bytes(t)
		r := process(e, f)
		if (r.Verdict != VerdictForward && r.Verdict != VerdictLocal) || r.Member != want {
			t.Fatalf("PTB %d went to %d (%v %v), the flow is %d's", i, r.Member, r.Verdict, r.Reason, want)
		}
	}
	// An echo request to the VIP is answered by the active node itself.
	echo := frame6{src: client6, dst: vip6, proto: layers.IPProtocolICMPv6, rawTransport: []byte{icmp6EchoRequest, 0, 0, 0, 0, 1, 0, 1}}.bytes(t)
	if r := process(e, echo); r.Verdict != VerdictLocal {
		t.Errorf("echo request: %v", r.Verdict)
	}
}

func TestDrops6(t *testing.T) {
	e := newTestEngine6(t)
	good := frame6{src: client6, dst: vip6, sport: 1, dport: 25, syn: true}.bytes(t)
	mut := func(f func([]byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	for _, c := range []struct {
		name   string
		frame  []byte
		reason Reason
	}{
		{"truncated header", good[:14+30], ReasonIPTruncated},
		{"version 4 in an IPv6 frame", mut(func(b []byte) []byte { b[14] = 0x45; return b }), ReasonIPVersion},
		{"payload beyond the frame", mut(func(b []byte) []byte { binary.BigEndian.PutUint16(b[18:], 2000); return b }), ReasonIPTotalLen},
		{"jumbogram", mut(func(b []byte) []byte { binary.BigEndian.PutUint16(b[18:], 0); return b }), ReasonIPTotalLen},
		{"not a VIP", frame6{src: client6, dst: client6, sport: 1, dport: 25}.bytes(t), ReasonNotVIP},
		{"TCP cut short", mut(func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[18:], 10)
			return b[:14+40+10]
		}), ReasonL4Truncated},
		{"hop-by-hop not first", frame6{src: client6, dst: vip6, sport: 1, dport: 25,
			ext: []layers.IPProtocol{layers.IPProtocolIPv6Destination, layers.IPProtocolIPv6HopByHop}}.bytes(t), ReasonIPv6ExtChain},
		{"chain too long", frame6{src: client6, dst: vip6, sport: 1, dport: 25,
			ext: []layers.IPProtocol{0, 60, 60, 60, 60, 60, 60, 60, 60}}.bytes(t), ReasonIPv6ExtChain},
		{"extension header cut short", mut(func(b []byte) []byte {
			b[14+6] = nhDestOpts
			binary.BigEndian.PutUint16(b[18:], 4)
			return b[:14+40+4]
		}), ReasonIPv6ExtChain},
		{"two fragment headers", mut(func(b []byte) []byte {
			h := []byte{44, 0, 0, 1, 0, 0, 0, 1, 6, 0, 0, 1, 0, 0, 0, 1}
			out := append(append(append([]byte(nil), b[:54]...), h...), b[54:]...)
			out[14+6] = nhFragment
			binary.BigEndian.PutUint16(out[18:], uint16(len(out)-54))
			return out
		}), ReasonIPv6ExtChain},
	} {
		if r := process(e, c.frame); r.Verdict != VerdictDrop || r.Reason != c.reason {
			t.Errorf("%s: %v %v, want drop %v", c.name, r.Verdict, r.Reason, c.reason)
		}
	}
	// Legitimate extension headers are walked.
	ok := frame6{src: client6, dst: vip6, sport: 9, dport: 25, syn: true,
		ext: []layers.IPProtocol{layers.IPProtocolIPv6HopByHop, layers.IPProtocolIPv6Destination}}.bytes(t)
	if r := process(e, ok); r.Verdict != VerdictForward && r.Verdict != VerdictLocal {
		t.Errorf("hop-by-hop and destination options: %v %v", r.Verdict, r.Reason)
	}
	// Standby: dropped as inactive.
	e.SetActive(false)
	if r := process(e, append([]byte(nil), good...)); r.Reason != ReasonInactive {
		t.Errorf("standby: %v", r.Reason)
	}
}

func TestPersistence6(t *testing.T) {
	e := newTestEngine6(t, withPersistence(15*time.Second))
	r := process(e, frame6{src: client6, dst: vip6, sport: 1000, dport: 25, syn: true}.bytes(t))
	for p := uint16(1); p < 50; p++ {
		r2 := process(e, frame6{src: client6, dst: vip6, sport: 1000 + p, dport: 143, syn: true}.bytes(t))
		if r2.Member != r.Member {
			t.Fatalf("a persistent client's new connection went to %d, its first to %d", r2.Member, r.Member)
		}
	}
}

func TestProcess6Allocs(t *testing.T) {
	e := newTestEngine6(t)
	b := frame6{src: client6, dst: vip6, sport: 1, dport: 25, ack: true}.bytes(t)
	process(e, append([]byte(nil), b...))
	var scratch [128]byte
	n := testing.AllocsPerRun(1000, func() {
		copy(b[0:6], vmacT)
		e.Process(b, false, scratch[:])
	})
	if n != 0 {
		t.Fatalf("Process allocates %v per IPv6 frame, want 0", n)
	}
}

func BenchmarkProcess6(b *testing.B) {
	e := newTestEngine6(b)
	frames := make([][]byte, 1024)
	for i := range frames {
		src := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(i >> 8), byte(i)})
		frames[i] = frame6{src: src, dst: vip6, sport: uint16(1000 + i), dport: 25, ack: true, payload: make([]byte, 18)}.bytes(b)
		process(e, append([]byte(nil), frames[i]...))
	}
	var scratch [128]byte
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		f := frames[i&1023]
		copy(f[0:6], vmacT)
		e.Process(f, false, scratch[:])
	}
}

func BenchmarkParseIPv6(b *testing.B) {
	f := frame6{src: client6, dst: vip6, sport: 1, dport: 25, ack: true}.bytes(b)
	var p Packet6
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		ParseIPv6(f, &p)
	}
}
