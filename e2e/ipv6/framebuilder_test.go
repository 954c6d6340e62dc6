package ipv6

import (
	"encoding/binary"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// Guards against a frame builder bug: the valid frames decode with gopacket's layers (an
// independent decoder) down to their UDP payload with checksums that verify, and each malformed
// kind is malformed the way its name says and otherwise well formed.
func TestFrameBuilder6(t *testing.T) {
	ip := netip.MustParseAddr
	fb := &frameBuilder6{src: net.HardwareAddr{2, 0, 0, 0, 0, 1}, dst: net.HardwareAddr{2, 0, 0, 0, 0, 2},
		from: ip("2001:db8::1"), to: ip("2001:db8::200"), rng: rand.New(rand.NewPCG(7, 8))}
	payload := []byte("x y z")

	decode := func(f []byte) gopacket.Packet {
		return gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
	}
	verifyUDP := func(name string, f []byte) {
		p := decode(f)
		if el := p.ErrorLayer(); el != nil {
			t.Errorf("%s: gopacket: %v", name, el.Error())
			return
		}
		ip6, _ := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
		udp, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if fr, ok := p.Layer(layers.LayerTypeIPv6Fragment).(*layers.IPv6Fragment); ok && udp == nil {
			// gopacket leaves a fragment's payload undecoded, even an atomic one's.
			var u layers.UDP
			if fr.NextHeader == layers.IPProtocolUDP && u.DecodeFromBytes(fr.Payload, gopacket.NilDecodeFeedback) == nil {
				udp = &u
			}
		}
		if ip6 == nil || udp == nil {
			t.Errorf("%s: layers %v, want IPv6 and UDP", name, p.Layers())
			return
		}
		if int(ip6.Length) != len(f)-14-40 {
			t.Errorf("%s: payload length %d, frame carries %d", name, ip6.Length, len(f)-14-40)
		}
		seg := append(udp.Contents, udp.Payload...)
		if fb.l4sum(nhUDP, seg) != 0 || string(udp.Payload) != string(payload) || udp.DstPort != udpPort {
			t.Errorf("%s: UDP to %d with %q; checksum verifies to %#x, want 0", name, udp.DstPort, udp.Payload, fb.l4sum(nhUDP, seg))
		}
	}
	f := fb.udpWithOptions(1234, udpPort, payload)
	verifyUDP("options", f)
	if p := decode(f); p.Layer(layers.LayerTypeIPv6HopByHop) == nil || p.Layer(layers.LayerTypeIPv6Destination) == nil {
		t.Errorf("options frame lacks Hop-by-Hop or Destination Options: %v", p.Layers())
	}
	f = fb.udpAtomicFragment(1234, udpPort, payload)
	verifyUDP("atomic fragment", f)
	if fr, ok := decode(f).Layer(layers.LayerTypeIPv6Fragment).(*layers.IPv6Fragment); !ok || fr.FragmentOffset != 0 || fr.MoreFragments {
		t.Errorf("atomic fragment: fragment header %+v", fr)
	}

	// The malformed kinds.
	if f := fb.truncatedHeader(); len(f) != 14+30 {
		t.Errorf("truncated header frame is %d bytes", len(f))
	}
	if f := fb.longPayloadLen(); int(binary.BigEndian.Uint16(f[18:20])) <= len(f)-54 {
		t.Errorf("long payload length %d for %d bytes", binary.BigEndian.Uint16(f[18:20]), len(f)-54)
	}
	if f := fb.zeroPayloadLen(); binary.BigEndian.Uint16(f[18:20]) != 0 || len(f) <= 54 {
		t.Errorf("zero payload length frame: %x", f)
	}
	if p := decode(fb.hopByHopNotFirst()); p.Layer(layers.LayerTypeIPv6Destination) == nil {
		t.Errorf("hop-by-hop not first: %v", p.Layers())
	} else if d := p.Layer(layers.LayerTypeIPv6Destination).(*layers.IPv6Destination); d.NextHeader != layers.IPProtocolIPv6HopByHop {
		t.Errorf("hop-by-hop not first: Destination Options' next header %v", d.NextHeader)
	}
	n := 0
	for _, l := range decode(fb.longChain()).Layers() {
		if l.LayerType() == layers.LayerTypeIPv6Destination {
			n++
		}
	}
	if n != 16 {
		t.Errorf("long chain has %d Destination Options headers, want 16", n)
	}
	if f := fb.twoFragments(); f[14+6] != nhFragment || f[54] != nhFragment || f[62] != nhUDP {
		t.Errorf("two fragments: next headers %d %d %d", f[20], f[54], f[62])
	}
	if f := fb.cutExtension(); len(f) != 54+8 || (int(f[55])+1)*8 <= 8 {
		t.Errorf("cut extension: %x", f)
	}
	for name, f := range map[string][]byte{"ns": fb.nsHopLimit64(), "na": fb.naHopLimit64()} {
		p := decode(f)
		ip6, _ := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
		icmp, _ := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
		if ip6 == nil || icmp == nil || ip6.HopLimit != 64 {
			t.Errorf("%s hop limit 64: layers %v", name, p.Layers())
			continue
		}
		if fb.l4sum(nhICMPv6, append(icmp.Contents, icmp.Payload...)) != 0 {
			t.Errorf("%s: ICMPv6 checksum does not verify", name)
		}
		var target net.IP
		if name == "ns" {
			s, ok := p.Layer(layers.LayerTypeICMPv6NeighborSolicitation).(*layers.ICMPv6NeighborSolicitation)
			if ok {
				target = s.TargetAddress
			}
		} else {
			a, ok := p.Layer(layers.LayerTypeICMPv6NeighborAdvertisement).(*layers.ICMPv6NeighborAdvertisement)
			if ok {
				target = a.TargetAddress
				if !a.Override() {
					t.Errorf("na: no override flag")
				}
			}
		}
		if !target.Equal(fb.to.AsSlice()) {
			t.Errorf("%s: target %v, want %v (layers %v)", name, target, fb.to, p.Layers())
		}
	}
	if f := fb.nsTruncated(); len(f) != 54+12 || f[54] != 135 || f[21] != 255 {
		t.Errorf("truncated NS: %x", f)
	}
	if f := fb.tooBigShortQuote(); f[20] != nhICMPv6 || f[54] != 2 || len(f) != 54+8+20 || fb.l4sum(nhICMPv6, f[54:]) != 0 {
		t.Errorf("Packet Too Big with a short quote: %x", f)
	}
	if f := fb.tcpTruncated(); len(f) != 54+10 || f[20] != nhTCP {
		t.Errorf("truncated TCP: %x", f)
	}
	if f := fb.tcpShortOffset(); f[54+12]>>4 != 3 || fb.l4sum(nhTCP, f[54:]) != 0 {
		t.Errorf("TCP data offset frame: offset %d, checksum verifies to %#x", f[54+12]>>4, fb.l4sum(nhTCP, f[54:]))
	}
	if f := fb.badVersion(); f[14]>>4 != 4 || binary.BigEndian.Uint16(f[12:14]) != etherIPv6 {
		t.Errorf("bad version: %x", f[:20])
	}
	for i := 0; i < 100; i++ {
		if f := fb.garbage(); len(f) < 15 || len(f) > 14+200 || binary.BigEndian.Uint16(f[12:14]) != etherIPv6 {
			t.Fatalf("garbage frame of %d bytes, ethertype %#x", len(f), binary.BigEndian.Uint16(f[12:14]))
		}
	}
}
