package afxdp

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// l4Frame builds a frame with a correct TCP or UDP checksum (gopacket as the oracle) and
// returns it with the offset of the checksum field.
func l4Frame(t testing.TB, v6, udp, vlan bool, payload []byte) ([]byte, int) {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: clientMAC, DstMAC: testVMAC, EthernetType: layers.EthernetTypeIPv4}
	ls := []gopacket.SerializableLayer{eth}
	off := 14
	if vlan {
		eth.EthernetType = layers.EthernetTypeDot1Q
		ls = append(ls, &layers.Dot1Q{VLANIdentifier: 7, Type: layers.EthernetTypeIPv4})
		off += 4
	}
	var nl gopacket.NetworkLayer
	if v6 {
		if vlan {
			ls[1].(*layers.Dot1Q).Type = layers.EthernetTypeIPv6
		} else {
			eth.EthernetType = layers.EthernetTypeIPv6
		}
		ip := &layers.IPv6{Version: 6, HopLimit: 64, SrcIP: net.ParseIP("2001:db8::1"), DstIP: net.ParseIP("2001:db8::2")}
		nl, off = ip, off+40
		ls = append(ls, ip)
	} else {
		ip := &layers.IPv4{Version: 4, TTL: 64, SrcIP: net.IP{198, 51, 100, 7}, DstIP: net.IP{192, 0, 2, 100}}
		nl, off = ip, off+20
		ls = append(ls, ip)
	}
	if udp {
		u := &layers.UDP{SrcPort: 5060, DstPort: 5060}
		u.SetNetworkLayerForChecksum(nl)
		ls = append(ls, u)
		off += 6
		if ip, ok := nl.(*layers.IPv6); ok {
			ip.NextHeader = layers.IPProtocolUDP
		} else {
			nl.(*layers.IPv4).Protocol = layers.IPProtocolUDP
		}
	} else {
		tc := &layers.TCP{SrcPort: 40000, DstPort: 443, ACK: true, PSH: true, Window: 500, Seq: 7}
		tc.SetNetworkLayerForChecksum(nl)
		ls = append(ls, tc)
		off += 16
		if ip, ok := nl.(*layers.IPv6); ok {
			ip.NextHeader = layers.IPProtocolTCP
		} else {
			nl.(*layers.IPv4).Protocol = layers.IPProtocolTCP
		}
	}
	ls = append(ls, gopacket.Payload(payload))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), off
}

// partial turns f's checksum into what a CHECKSUM_PARTIAL sender leaves: the folded
// pseudo-header sum (Linux: ~csum_tcpudp_magic(saddr, daddr, len, proto, 0)).
func partial(f []byte, field int, v6, udp, vlan bool) {
	ipOff := 14
	if vlan {
		ipOff += 4
	}
	ip := f[ipOff:]
	var s uint32
	var l4len int
	proto := uint32(protoTCP)
	if udp {
		proto = protoUDP
	}
	if v6 {
		s = sum16(ip[8:40], 0)
		l4len = int(binary.BigEndian.Uint16(ip[4:]))
	} else {
		s = sum16(ip[12:20], 0)
		l4len = int(binary.BigEndian.Uint16(ip[2:])) - 20
	}
	binary.BigEndian.PutUint16(f[field:], fold(s+proto+uint32(l4len)))
}

func TestFixPartialChecksum(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		for _, udp := range []bool{false, true} {
			for _, vlan := range []bool{false, true} {
				for _, n := range []int{0, 1, 7, 1400} {
					payload := bytes.Repeat([]byte{0xa5, 0x3c, 0x01}, n)[:n]
					good, field := l4Frame(t, v6, udp, vlan, payload)
					name := func(s string) string {
						return s + map[bool]string{false: " v4", true: " v6"}[v6] + map[bool]string{false: " tcp", true: " udp"}[udp] +
							map[bool]string{false: "", true: " vlan"}[vlan]
					}
					f := bytes.Clone(good)
					if fixPartialChecksum(f) || !bytes.Equal(f, good) {
						t.Errorf("%s (%d bytes): a complete checksum was changed", name("complete"), n)
					}
					partial(f, field, v6, udp, vlan)
					if bytes.Equal(f, good) {
						continue // the checksum happened to equal the pseudo-header sum
					}
					if !fixPartialChecksum(f) || !bytes.Equal(f, good) {
						t.Errorf("%s (%d bytes): field %x, want %x", name("partial"), n, f[field:field+2], good[field:field+2])
					}
					bad := bytes.Clone(good)
					bad[field] ^= 0x40
					if fixPartialChecksum(bad) {
						t.Errorf("%s (%d bytes): a corrupt checksum was repaired", name("corrupt"), n)
					}
				}
			}
		}
	}
}

func TestFixPartialChecksumLeavesOthers(t *testing.T) {
	good, field := l4Frame(t, false, false, false, []byte("x"))
	frag := bytes.Clone(good)
	partial(frag, field, false, false, false)
	frag[14+6] |= 0x20 // more fragments
	for name, f := range map[string][]byte{
		"empty": nil, "short": good[:13], "ARP": ethFrame(testVMAC, clientMAC, 0x0806, 1),
		"truncated IP": good[:30], "fragment": frag,
	} {
		c := bytes.Clone(f)
		if fixPartialChecksum(c) || !bytes.Equal(c, f) {
			t.Errorf("%s: changed", name)
		}
	}
}

// FuzzFixPartialChecksum: never panics, and a frame it changes differs only in the two bytes
// of a checksum field and then verifies.
func FuzzFixPartialChecksum(f *testing.F) {
	for _, v6 := range []bool{false, true} {
		for _, udp := range []bool{false, true} {
			g, field := l4Frame(f, v6, udp, false, []byte("seed payload"))
			f.Add(bytes.Clone(g))
			partial(g, field, v6, udp, false)
			f.Add(g)
		}
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		c := bytes.Clone(frame)
		if !fixPartialChecksum(c) {
			if !bytes.Equal(c, frame) {
				t.Fatal("changed the frame but reported no change")
			}
			return
		}
		diff := 0
		for i := range c {
			if c[i] != frame[i] {
				diff++
			}
		}
		if diff == 0 || diff > 2 {
			t.Fatalf("%d bytes changed", diff)
		}
		if fixPartialChecksum(c) {
			t.Fatal("a fixed frame was fixed again")
		}
	})
}

func BenchmarkFixPartialChecksum(b *testing.B) {
	for _, n := range []int{0, 1400} {
		good, field := l4Frame(b, false, false, false, make([]byte, n))
		b.Run("complete-"+map[int]string{0: "ack", 1400: "1400B"}[n], func(b *testing.B) {
			for b.Loop() {
				fixPartialChecksum(good)
			}
		})
		p := bytes.Clone(good)
		b.Run("partial-"+map[int]string{0: "ack", 1400: "1400B"}[n], func(b *testing.B) {
			for b.Loop() {
				partial(p, field, false, false, false)
				fixPartialChecksum(p)
			}
		})
	}
}
