package dataplane

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// FuzzParseIPv4 checks the parser against gopacket's decoders: it never panics, and whenever it
// accepts a frame, gopacket decodes the same addresses, protocol, ports and flags.
func FuzzParseIPv4(f *testing.F) {
	f.Add(frameSpec{src: client1, dst: vip, sport: 1, dport: 25, syn: true}.bytes(f))
	f.Add(frameSpec{src: client1, dst: vip, proto: layers.IPProtocolUDP, sport: 5060, dport: 5060, payload: []byte("INVITE")}.bytes(f))
	f.Add(frameSpec{src: client1, dst: vip, sport: 7, dport: 25, options: true}.bytes(f))
	f.Add(frameSpec{src: client1, dst: vip, proto: layers.IPProtocolUDP, fragOff: 185, id: 3, payload: make([]byte, 16)}.bytes(f))
	f.Add(icmpError(f, 3, 4, frameSpec{src: vip, dst: client1, proto: layers.IPProtocolTCP, sport: 80, dport: 4000}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Packet
		r := ParseIPv4(b, &p)
		if r != ReasonNone {
			return
		}
		pkt := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.DecodeOptions{Lazy: false, NoCopy: true})
		ipl, ok := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		if !ok {
			t.Fatalf("accepted a frame gopacket finds no IPv4 in: %v", pkt.ErrorLayer())
		}
		src, _ := netip.AddrFromSlice(ipl.SrcIP)
		dst, _ := netip.AddrFromSlice(ipl.DstIP)
		if u32(src) != p.Src || u32(dst) != p.Dst || uint8(ipl.Protocol) != p.Proto {
			t.Fatalf("addresses/protocol differ: ours %08x %08x %d, gopacket %v %v %d", p.Src, p.Dst, p.Proto, src, dst, ipl.Protocol)
		}
		if p.Fragment != (ipl.Flags&layers.IPv4MoreFragments != 0 || ipl.FragOffset != 0) {
			t.Fatalf("fragment flag differs")
		}
		if p.Fragment {
			// gopacket does not decode transport headers of fragments; compare raw bytes instead.
			if p.FirstFragment && (p.Proto == protoTCP || p.Proto == protoUDP) {
				l4 := ipl.Payload
				if binary.BigEndian.Uint16(l4[0:2]) != p.SPort || binary.BigEndian.Uint16(l4[2:4]) != p.DPort {
					t.Fatal("first fragment ports differ")
				}
			}
			return
		}
		switch p.Proto {
		case protoTCP:
			tcp, ok := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
			if !ok {
				return // gopacket rejects some TCP options we do not parse; ports are what matter
			}
			if uint16(tcp.SrcPort) != p.SPort || uint16(tcp.DstPort) != p.DPort || tcp.SYN != (p.TCPFlags&0x02 != 0) ||
				tcp.ACK != (p.TCPFlags&0x10 != 0) || tcp.FIN != (p.TCPFlags&0x01 != 0) || tcp.RST != (p.TCPFlags&0x04 != 0) {
				t.Fatalf("TCP differs: ours %d>%d flags %02x, gopacket %v", p.SPort, p.DPort, p.TCPFlags, tcp)
			}
		case protoUDP:
			udp, ok := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
			if !ok {
				t.Fatal("accepted UDP gopacket cannot decode")
			}
			if uint16(udp.SrcPort) != p.SPort || uint16(udp.DstPort) != p.DPort {
				t.Fatal("UDP ports differ")
			}
		}
	})
}

// FuzzProcess feeds arbitrary frames to a configured, active engine: it must never panic and
// must give every frame exactly one verdict, with a reason for every drop.
func FuzzProcess(f *testing.F) {
	f.Add(frameSpec{src: client1, dst: vip, sport: 1, dport: 25, syn: true}.bytes(f))
	f.Add(arpRequest(f, client1, clentMAC, vip))
	f.Add(icmpError(f, 3, 4, frameSpec{src: vip, dst: client1, proto: layers.IPProtocolUDP, sport: 80, dport: 4000}))
	f.Add(frame6{src: client6, dst: vip6, sport: 1, dport: 25, syn: true, ext: []layers.IPProtocol{0}}.bytes(f))
	f.Add(frame6{src: client6, dst: vip6, proto: layers.IPProtocolUDP, frag: true, more: true, fragID: 3, sport: 9, dport: 9,
		payload: make([]byte, 40)}.bytes(f))
	f.Add(sipFrame(f, client1, 5060, vip, invite("fuzz@x")))
	f.Add(sipFrame(f, client6, 5060, vip6, sipRequest("BYE", "i: fuzz6@x", 300)))
	for _, fr := range fragments(f, client1, 5060, vip, sipRequest("INVITE", "Call-ID: frag@x", 1600), 9, 1448) {
		f.Add(fr)
	}
	e := newTestEngine6(f, withCallID(sipPort))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) >= 6 {
			copy(b[0:6], vmacT) // aim most inputs at the balancer
		}
		r := process(e, b)
		if r.Verdict >= numVerdicts {
			t.Fatalf("bad verdict %d", r.Verdict)
		}
		if r.Verdict == VerdictDrop && (r.Reason == ReasonNone || r.Reason >= numReasons) {
			t.Fatalf("drop without a reason: %+v", r)
		}
	})
}

// FuzzParseIPv6 checks the IPv6 parser against gopacket's decoders: it never panics, and whenever
// it accepts a frame, gopacket decodes the same addresses, and for unfragmented TCP and UDP the
// same ports, through the same extension headers.
func FuzzParseIPv6(f *testing.F) {
	f.Add(frame6{src: client6, dst: vip6, sport: 1, dport: 25, syn: true}.bytes(f))
	f.Add(frame6{src: client6, dst: vip6, proto: layers.IPProtocolUDP, sport: 5060, dport: 5060, payload: []byte("INVITE")}.bytes(f))
	f.Add(frame6{src: client6, dst: vip6, sport: 7, dport: 25, ext: []layers.IPProtocol{0, 60}}.bytes(f))
	f.Add(frame6{src: client6, dst: vip6, proto: layers.IPProtocolUDP, frag: true, more: true, fragID: 9, sport: 1, dport: 2,
		payload: make([]byte, 16)}.bytes(f))
	f.Add(frame6{src: client6, dst: vip6, proto: layers.IPProtocolUDP, frag: true, fragOff: 100, fragID: 9,
		payload: make([]byte, 16)}.bytes(f))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Packet6
		if ParseIPv6(b, &p) != ReasonNone {
			return
		}
		pkt := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.DecodeOptions{Lazy: false, NoCopy: true})
		ipl, ok := pkt.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
		if !ok {
			t.Fatalf("accepted a frame gopacket finds no IPv6 in: %v", pkt.ErrorLayer())
		}
		if netip.AddrFrom16(p.Src) != netip.AddrFrom16([16]byte(ipl.SrcIP.To16())) ||
			netip.AddrFrom16(p.Dst) != netip.AddrFrom16([16]byte(ipl.DstIP.To16())) {
			t.Fatalf("addresses differ: ours %x %x, gopacket %v %v", p.Src, p.Dst, ipl.SrcIP, ipl.DstIP)
		}
		if p.Fragment {
			return // gopacket does not reassemble; the fragment header itself was bounds-checked
		}
		if pkt.ErrorLayer() != nil {
			return // gopacket refused something further in we do not look at (options' contents)
		}
		switch p.Proto {
		case protoTCP:
			if tcp, ok := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP); ok &&
				(uint16(tcp.SrcPort) != p.SPort || uint16(tcp.DstPort) != p.DPort) {
				t.Fatalf("TCP ports differ: ours %d>%d, gopacket %v", p.SPort, p.DPort, tcp)
			}
		case protoUDP:
			if udp, ok := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP); ok &&
				(uint16(udp.SrcPort) != p.SPort || uint16(udp.DstPort) != p.DPort) {
				t.Fatalf("UDP ports differ: ours %d>%d, gopacket %v", p.SPort, p.DPort, udp)
			}
		}
	})
}
