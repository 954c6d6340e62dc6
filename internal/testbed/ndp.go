package testbed

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

// solicitedNode returns the solicited-node multicast group of a (RFC 4291
// section 2.7.1): ff02::1:ffXX:XXXX with the low 24 bits of a.
func solicitedNode(a netip.Addr) netip.Addr {
	b := a.As16()
	return netip.AddrFrom16([16]byte{0: 0xff, 1: 0x02, 11: 0x01, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]})
}

// multicastMAC returns the Ethernet group address of an IPv6 multicast group
// (RFC 2464 section 7): 33:33 and the group's low 32 bits.
func multicastMAC(g netip.Addr) net.HardwareAddr {
	b := g.As16()
	return net.HardwareAddr{0x33, 0x33, b[12], b[13], b[14], b[15]}
}

// neighborSolicitation builds an Ethernet frame carrying a neighbour
// solicitation for target from src (RFC 4861 section 4.3) to target's
// solicited-node group, with a source link-layer address option.
func neighborSolicitation(srcMAC net.HardwareAddr, src, target netip.Addr) ([]byte, net.HardwareAddr, error) {
	group := solicitedNode(target)
	dstMAC := multicastMAC(group)
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv6}
	// Hop limit 255: receivers discard neighbour discovery messages that
	// may have crossed a router (RFC 4861 section 7.1.1).
	ip6 := &layers.IPv6{Version: 6, HopLimit: 255, NextHeader: layers.IPProtocolICMPv6,
		SrcIP: src.AsSlice(), DstIP: group.AsSlice()}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeNeighborSolicitation, 0)}
	if err := icmp.SetNetworkLayerForChecksum(ip6); err != nil {
		return nil, nil, err
	}
	ns := &layers.ICMPv6NeighborSolicitation{TargetAddress: target.AsSlice(),
		Options: layers.ICMPv6Options{{Type: layers.ICMPv6OptSourceAddress, Data: srcMAC}}}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip6, icmp, ns); err != nil {
		return nil, nil, err
	}
	return buf.Bytes(), dstMAC, nil
}

// parseNDPAdvert decodes a neighbour advertisement (RFC 4861 section 4.4);
// ok is false for anything else, and for advertisements a host must discard
// (hop limit other than 255, code other than 0; section 7.1.2).
func parseNDPAdvert(frame []byte) (NDPAdvert, bool) {
	var (
		eth  layers.Ethernet
		ip6  layers.IPv6
		icmp layers.ICMPv6
		na   layers.ICMPv6NeighborAdvertisement
	)
	df := gopacket.NilDecodeFeedback
	if eth.DecodeFromBytes(frame, df) != nil || eth.EthernetType != layers.EthernetTypeIPv6 {
		return NDPAdvert{}, false
	}
	if ip6.DecodeFromBytes(eth.Payload, df) != nil {
		return NDPAdvert{}, false
	}
	return decodeNDPAdvert(&eth, &ip6, &icmp, &na)
}

// decodeNDPAdvert decodes the ICMPv6 payload of an already decoded IPv6
// frame as a neighbour advertisement.
func decodeNDPAdvert(eth *layers.Ethernet, ip6 *layers.IPv6, icmp *layers.ICMPv6, na *layers.ICMPv6NeighborAdvertisement) (NDPAdvert, bool) {
	df := gopacket.NilDecodeFeedback
	if ip6.NextHeader != layers.IPProtocolICMPv6 || ip6.HopLimit != 255 || icmp.DecodeFromBytes(ip6.Payload, df) != nil ||
		icmp.TypeCode != layers.CreateICMPv6TypeCode(layers.ICMPv6TypeNeighborAdvertisement, 0) ||
		na.DecodeFromBytes(icmp.Payload, df) != nil {
		return NDPAdvert{}, false
	}
	target, ok := netip.AddrFromSlice(na.TargetAddress)
	dst, ok2 := netip.AddrFromSlice(ip6.DstIP)
	if !ok || !ok2 {
		return NDPAdvert{}, false
	}
	a := NDPAdvert{IP: target, Dst: dst, EthSrc: append(net.HardwareAddr(nil), eth.SrcMAC...),
		Router: na.Router(), Solicited: na.Solicited(), Override: na.Override()}
	for _, o := range na.Options {
		if o.Type == layers.ICMPv6OptTargetAddress && len(o.Data) >= 6 {
			a.MAC = append(net.HardwareAddr(nil), o.Data[:6]...)
		}
	}
	return a, true
}

// source6 returns the address NDPResolve solicits from: the host's Addr6, or
// the interface's link-local address when it has none.
func (h *Host) source6(ifi *net.Interface) (netip.Addr, error) {
	if h.Addr6.IsValid() {
		return h.Addr6, nil
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Addr{}, err
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Is6() && ip.IsLinkLocalUnicast() {
				return ip, nil
			}
		}
	}
	return netip.Addr{}, fmt.Errorf("%s has no IPv6 address to solicit from", ifi.Name)
}

// NDPResolve asks for ip's MAC with neighbour solicitations (RFC 4861) sent
// from the host's interface to ip's solicited-node group, with the host's
// Addr6 as source (its link-local address if it has none) and its MAC in a
// source link-layer address option, independently of the kernel's neighbour
// cache: the IPv6 counterpart of ARPResolve. Only a solicited advertisement
// for ip counts (the S flag; an unsolicited one, such as a balancer's
// announcement on takeover, does not), and its target link-layer address is
// returned. It fails with ErrTimeout when nobody answers within
// Options.ARPTimeout.
func (h *Host) NDPResolve(ip netip.Addr) (net.HardwareAddr, error) {
	if !ip.Is6() || ip.Is4In6() || ip.IsMulticast() {
		return nil, fmt.Errorf("%w: NDPResolve(%v): not an IPv6 unicast address", ErrBadOptions, ip)
	}
	var mac net.HardwareAddr
	err := h.Do(func() error {
		ifi, err := net.InterfaceByName(h.Ifname)
		if err != nil {
			return err
		}
		src, err := h.source6(ifi)
		if err != nil {
			return err
		}
		frame, dst, err := neighborSolicitation(ifi.HardwareAddr, src, ip)
		if err != nil {
			return err
		}
		c, err := packet.Listen(ifi, packet.Raw, unix.ETH_P_IPV6, nil)
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 1<<16+64) // GSO frames on veth can reach 64 KiB
		send := func() error {
			_, err := c.WriteTo(frame, &packet.Addr{HardwareAddr: dst})
			return err
		}
		found, err := h.solicit(send, c.SetReadDeadline, func() (bool, error) {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				return false, err
			}
			a, ok := parseNDPAdvert(buf[:n])
			if !ok || a.IP != ip || !a.Solicited || a.Dst != src {
				return false, nil
			}
			mac = a.MAC
			if mac == nil { // only allowed in answers to unicast solicitations
				mac = a.EthSrc
			}
			return true, nil
		})
		if err == nil && !found {
			err = fmt.Errorf("%w: no neighbour advertisement for %v within %v", ErrTimeout, ip, h.bed.opts.ARPTimeout)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("testbed: %s: NDP %v: %w", h.Name, ip, err)
	}
	return mac, nil
}
