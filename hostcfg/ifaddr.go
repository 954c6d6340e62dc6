package hostcfg

import (
	"fmt"
	"net"
	"net/netip"
)

// InterfaceIPv4 returns the first IPv4 address of the named interface: a node's real address
// when none is configured explicitly.
func InterfaceIPv4(name string) (netip.Addr, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return netip.Addr{}, err
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Addr{}, err
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap().Is4() {
				return ip.Unmap(), nil
			}
		}
	}
	return netip.Addr{}, fmt.Errorf("%s has no IPv4 address", name)
}

// LocalAddrs returns the IPv4 and IPv6 addresses configured on this host's interfaces (the VIPs
// on lo included, link-local ones left out): a member address among them is this node itself.
func LocalAddrs() map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return out
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && !ip.Unmap().IsLinkLocalUnicast() {
				out[ip.Unmap()] = true
			}
		}
	}
	return out
}
