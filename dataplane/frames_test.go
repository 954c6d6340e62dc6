package dataplane

import (
	"net"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// Test addresses: documentation ranges only (RFC 5737).
var (
	vip      = netip.MustParseAddr("192.0.2.200")
	client1  = netip.MustParseAddr("198.51.100.1")
	f1Addr   = netip.MustParseAddr("192.0.2.11")
	f2Addr   = netip.MustParseAddr("192.0.2.12")
	f3Addr   = netip.MustParseAddr("192.0.2.13")
	vmacT    = net.HardwareAddr{0x02, 0x6c, 0x32, 0x62, 0, 0}
	ourMAC   = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x11}
	f2MAC    = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x12}
	f3MAC    = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x13}
	clentMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
)

type frameSpec struct {
	dstMAC   net.HardwareAddr
	src, dst netip.Addr
	proto    layers.IPProtocol
	sport    uint16
	dport    uint16
	syn, ack bool
	fin, rst bool
	payload  []byte
	fragOff  uint16 // in 8-byte units
	mf       bool
	id       uint16
	options  bool
}

func (s frameSpec) bytes(t testing.TB) []byte {
	t.Helper()
	if s.dstMAC == nil {
		s.dstMAC = vmacT
	}
	if s.proto == 0 {
		s.proto = layers.IPProtocolTCP
	}
	eth := &layers.Ethernet{SrcMAC: clentMAC, DstMAC: s.dstMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: s.proto, SrcIP: s.src.AsSlice(), DstIP: s.dst.AsSlice(),
		Id: s.id, FragOffset: s.fragOff}
	if s.mf {
		ip.Flags = layers.IPv4MoreFragments
	}
	if s.options {
		ip.Options = []layers.IPv4Option{{OptionType: 7, OptionLength: 7, OptionData: []byte{4, 0, 0, 0, 0}}, {OptionType: 0, OptionLength: 1}}
	}
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	buf := gopacket.NewSerializeBuffer()
	var err error
	if s.fragOff != 0 {
		err = gopacket.SerializeLayers(buf, opts, eth, ip, gopacket.Payload(s.payload))
	} else {
		switch s.proto {
		case layers.IPProtocolTCP:
			tcp := &layers.TCP{SrcPort: layers.TCPPort(s.sport), DstPort: layers.TCPPort(s.dport), SYN: s.syn, ACK: s.ack,
				FIN: s.fin, RST: s.rst, Window: 1000}
			tcp.SetNetworkLayerForChecksum(ip)
			err = gopacket.SerializeLayers(buf, opts, eth, ip, tcp, gopacket.Payload(s.payload))
		case layers.IPProtocolUDP:
			udp := &layers.UDP{SrcPort: layers.UDPPort(s.sport), DstPort: layers.UDPPort(s.dport)}
			udp.SetNetworkLayerForChecksum(ip)
			err = gopacket.SerializeLayers(buf, opts, eth, ip, udp, gopacket.Payload(s.payload))
		default:
			err = gopacket.SerializeLayers(buf, opts, eth, ip, gopacket.Payload(s.payload))
		}
	}
	if err != nil {
		t.Fatalf("serialize: %v", err)
	}
	out := buf.Bytes()
	if s.mf && s.fragOff == 0 {
		// gopacket computes the UDP length from the payload it was given; a first fragment's
		// real datagram is longer, which the balancer never checks. Nothing to fix.
		_ = out
	}
	return append([]byte(nil), out...)
}

// icmpError builds an ICMP error from router to the VIP quoting a datagram from the VIP to a client.
func icmpError(t testing.TB, typ, code uint8, inner frameSpec) []byte {
	t.Helper()
	innerIP := &layers.IPv4{Version: 4, TTL: 64, Protocol: inner.proto, SrcIP: inner.src.AsSlice(), DstIP: inner.dst.AsSlice()}
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	ib := gopacket.NewSerializeBuffer()
	var l4 gopacket.SerializableLayer
	if inner.proto == layers.IPProtocolUDP {
		u := &layers.UDP{SrcPort: layers.UDPPort(inner.sport), DstPort: layers.UDPPort(inner.dport)}
		u.SetNetworkLayerForChecksum(innerIP)
		l4 = u
	} else {
		tc := &layers.TCP{SrcPort: layers.TCPPort(inner.sport), DstPort: layers.TCPPort(inner.dport), ACK: true}
		tc.SetNetworkLayerForChecksum(innerIP)
		l4 = tc
	}
	if err := gopacket.SerializeLayers(ib, opts, innerIP, l4); err != nil {
		t.Fatal(err)
	}
	quoted := ib.Bytes()[:28]
	eth := &layers.Ethernet{SrcMAC: clentMAC, DstMAC: vmacT, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: net.IP{198, 51, 100, 254},
		DstIP: vip.AsSlice()}
	icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, code)}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, opts, eth, ip, icmp, gopacket.Payload(quoted)); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

func arpRequest(t testing.TB, sender netip.Addr, senderMAC net.HardwareAddr, target netip.Addr) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: senderMAC, DstMAC: broadcastMAC, EthernetType: layers.EthernetTypeARP}
	a := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6,
		ProtAddressSize: 4, Operation: layers.ARPRequest, SourceHwAddress: senderMAC, SourceProtAddress: sender.AsSlice(),
		DstHwAddress: make([]byte, 6), DstProtAddress: target.AsSlice()}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{}, eth, a); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}
