package dsrprobe

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

// Listen opens the probe stack's AF_PACKET socket on cfg.Interface, in the
// network namespace of the calling OS thread, and starts the stack. The socket:
//
//   - is a raw socket bound to ETH_P_ALL, so it sees frames before ingress
//     hooks and rx handlers (design notes), with the BPF program of filter
//     attached before it is bound, so it reads nothing else;
//   - sets PACKET_IGNORE_OUTGOING, so it never reads its own frames;
//   - sets PACKET_VNET_HDR, so each frame comes with its offload state:
//     frames from a veth peer or from this host may have transport
//     checksums left to offload (CHECKSUM_PARTIAL) and may be GSO
//     super-frames larger than the MTU; without the header they would look
//     corrupt and be dropped by the stack's checksum check;
//   - adds cfg.MAC to the interface's unicast filter (PACKET_MR_UNICAST) when
//     it is not the interface's own MAC, and the solicited-node multicast
//     group of cfg.Source6 (RFC 4291 section 2.7.1, mapped to Ethernet by
//     RFC 2464 section 7) to its multicast filter, so that a real NIC
//     delivers both. The memberships end when the socket closes.
//
// A switch that snoops MLD and has a querier forwards the solicited-node
// group only to ports that report it; the probe stack sends no MLD reports,
// so on such a LAN put the balancer's port in the group statically or
// disable snooping for it.
func Listen(cfg Config) (*Stack, error) {
	ifi, err := net.InterfaceByName(cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("%w: interface %q: %w", ErrBadConfig, cfg.Interface, err)
	}
	if err := cfg.validate(ifi); err != nil {
		return nil, err
	}
	prog, err := filter(cfg.MAC, cfg.Source4, cfg.Source6)
	if err != nil {
		return nil, fmt.Errorf("dsrprobe: assemble BPF filter: %w", err)
	}
	// Protocol 0 receives nothing (packet(7)); setupSocket binds ETH_P_ALL
	// once every option is in place, so no frame is queued without its
	// virtio_net_hdr.
	c, err := packet.Listen(ifi, packet.Raw, 0, &packet.Config{Filter: prog})
	if err != nil {
		return nil, fmt.Errorf("dsrprobe: packet socket on %s: %w", ifi.Name, err)
	}
	var groups []net.HardwareAddr
	if cfg.Source6.IsValid() {
		groups = append(groups, solicitedNodeMAC(cfg.Source6))
	}
	if err := setupSocket(c, ifi, cfg.MAC, groups); err != nil {
		_ = c.Close()
		return nil, err
	}
	return newStack(c, ifi, cfg, true)
}

// solicitedNodeMAC is the Ethernet group of a's solicited-node multicast
// address ff02::1:ffXX:XXXX: 33:33 and the low 32 bits of the group.
func solicitedNodeMAC(a netip.Addr) net.HardwareAddr {
	b := a.As16()
	return net.HardwareAddr{0x33, 0x33, 0xff, b[13], b[14], b[15]}
}

func setupSocket(c *packet.Conn, ifi *net.Interface, mac net.HardwareAddr, groups []net.HardwareAddr) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("dsrprobe: raw socket: %w", err)
	}
	var serr error
	cerr := rc.Control(func(fd uintptr) {
		set := func(name string, opt int) bool {
			if err := unix.SetsockoptInt(int(fd), unix.SOL_PACKET, opt, 1); err != nil {
				serr = fmt.Errorf("dsrprobe: setsockopt %s: %w", name, err)
				return false
			}
			return true
		}
		if !set("PACKET_IGNORE_OUTGOING", unix.PACKET_IGNORE_OUTGOING) || !set("PACKET_VNET_HDR", unix.PACKET_VNET_HDR) {
			return
		}
		member := func(typ uint16, m net.HardwareAddr) bool {
			mreq := unix.PacketMreq{Ifindex: int32(ifi.Index), Type: typ, Alen: 6}
			copy(mreq.Address[:], m)
			if err := unix.SetsockoptPacketMreq(int(fd), unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq); err != nil {
				serr = fmt.Errorf("dsrprobe: add membership %v: %w", m, err)
				return false
			}
			return true
		}
		if !bytes.Equal(mac, ifi.HardwareAddr) && !member(unix.PACKET_MR_UNICAST, mac) {
			return
		}
		for _, g := range groups {
			if !member(unix.PACKET_MR_MULTICAST, g) {
				return
			}
		}
		sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}
		if err := unix.Bind(int(fd), sa); err != nil {
			serr = fmt.Errorf("dsrprobe: bind ETH_P_ALL on %s: %w", ifi.Name, err)
		}
	})
	if cerr != nil {
		return fmt.Errorf("dsrprobe: raw socket control: %w", cerr)
	}
	return serr
}

// htons converts a 16-bit value to network byte order for sockaddr_ll.
func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}
