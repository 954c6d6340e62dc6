package afxdp

import (
	"fmt"
	"net"

	"github.com/l2lb/l2lb/afpacket"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// controlFilter accepts the frames the balancer must answer although the XDP program leaves
// them to the kernel: ARP (ethertype 0x0806, RFC 826) and ICMPv6 router and neighbour discovery
// (types 133-137, RFC 4861 §4) in an IPv6 header without extension headers (next header 58 at
// offset 14+6; the ICMPv6 type at 14+40). Everything else is dropped in the kernel, so the
// host's own traffic costs the balancer nothing.
var controlFilter = []bpf.Instruction{
	bpf.LoadAbsolute{Off: 12, Size: 2},
	bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.ETH_P_ARP, SkipTrue: 6},
	bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.ETH_P_IPV6, SkipFalse: 6},
	bpf.LoadAbsolute{Off: 20, Size: 1},
	bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.IPPROTO_ICMPV6, SkipFalse: 4},
	bpf.LoadAbsolute{Off: 54, Size: 1},
	bpf.JumpIf{Cond: bpf.JumpLessThan, Val: 133, SkipTrue: 2},
	bpf.JumpIf{Cond: bpf.JumpGreaterThan, Val: 137, SkipTrue: 1},
	bpf.RetConstant{Val: 0x40000},
	bpf.RetConstant{Val: 0},
}

// openControl opens the non-blocking packet socket that reads ARP and NDP on ifindex with
// PACKET_IGNORE_OUTGOING, and adds vmac (if any) to the interface's unicast filter. The
// filter is attached before the socket is bound, so no unfiltered frame is ever queued.
func openControl(ifindex int, vmac net.HardwareAddr) (fd int, err error) {
	fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("afxdp: control socket: %w", err)
	}
	defer func() {
		if err != nil {
			unix.Close(fd)
			fd = -1
		}
	}()
	raw, err := bpf.Assemble(controlFilter)
	if err != nil {
		return -1, fmt.Errorf("afxdp: control filter: %w", err)
	}
	if err := afpacket.AttachFilter(fd, raw); err != nil {
		return -1, fmt.Errorf("afxdp: control filter: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		return -1, fmt.Errorf("afxdp: PACKET_IGNORE_OUTGOING: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: ethPAll, Ifindex: ifindex}); err != nil {
		return -1, fmt.Errorf("afxdp: bind control socket: %w", err)
	}
	if vmac != nil {
		mreq := unix.PacketMreq{Ifindex: int32(ifindex), Type: unix.PACKET_MR_UNICAST, Alen: 6}
		copy(mreq.Address[:], vmac)
		if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq); err != nil {
			return -1, fmt.Errorf("afxdp: virtual MAC membership: %w", err)
		}
	}
	return fd, nil
}
