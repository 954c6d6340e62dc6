package afpacket

import (
	"fmt"
	"net"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// acceptWhole is the classic-BPF return value that keeps the whole frame:
// packet_rcv and tpacket_rcv truncate a frame to the value the filter
// returns, and 0 drops it.
const acceptWhole = 0xffffffff

// DestinationMACFilter returns a classic-BPF program for Config.Filter that
// accepts, whole, only the frames whose Ethernet destination address is mac
// and drops every other one, including broadcasts and multicasts. It lets a
// receive ring that listens on a shared interface (the balancer's, which also
// carries the host's own traffic) see only the frames sent to one address,
// a virtual MAC say, without copying the rest into the ring.
//
// The program reads the frame from its first byte, which is the Ethernet
// header even on a PACKET_VNET_HDR socket: the kernel runs socket filters on
// the frame and writes the virtio_net_hdr into the ring separately. A frame
// shorter than 6 bytes fails the loads and is dropped. It returns an error
// wrapping ErrInvalidConfig if mac is not 6 bytes long.
func DestinationMACFilter(mac net.HardwareAddr) ([]bpf.RawInstruction, error) {
	if len(mac) != 6 {
		return nil, fmt.Errorf("%w: destination MAC %v is not 6 bytes", ErrInvalidConfig, mac)
	}
	// Two loads cover the six bytes: a word (bytes 0-3) and a half-word
	// (bytes 4-5), both in network byte order as LoadAbsolute reads them.
	hi := uint32(mac[0])<<24 | uint32(mac[1])<<16 | uint32(mac[2])<<8 | uint32(mac[3])
	lo := uint32(mac[4])<<8 | uint32(mac[5])
	return bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: 0, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: hi, SkipTrue: 3}, // to drop
		bpf.LoadAbsolute{Off: 4, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: lo, SkipTrue: 1}, // to drop
		bpf.RetConstant{Val: acceptWhole},
		bpf.RetConstant{Val: 0},
	})
}

// AttachFilter attaches prog to the socket fd with SO_ATTACH_FILTER
// (socket(7)); the kernel copies and checks the program, so prog need not
// outlive the call. Open uses it for Config.Filter; it is exported for the
// other packet sockets of the fast path (the AF_XDP backend's control
// socket).
//
// SO_LOCK_FILTER is deliberately not set. It would be harmless today (this
// package never changes a filter once attached) but buys nothing: it guards
// a filter against code that can reach the descriptor yet should not be able
// to widen what it reads, as in a sandbox, and a Socket never hands its
// descriptor out. Setting it would only make a later change of filter on a
// live socket (following a new virtual MAC, say) fail with EPERM.
func AttachFilter(fd int, prog []bpf.RawInstruction) error {
	if len(prog) == 0 || len(prog) > maxFilterLen {
		return fmt.Errorf("%w: filter of %d instructions (1 to %d)", ErrInvalidConfig, len(prog), maxFilterLen)
	}
	f := make([]unix.SockFilter, len(prog))
	for i, r := range prog {
		f[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	fprog := unix.SockFprog{Len: uint16(len(f)), Filter: &f[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog); err != nil {
		return fmt.Errorf("afpacket: setsockopt SO_ATTACH_FILTER (%d instructions): %w", len(prog), err)
	}
	return nil
}
