package dsrprobe

import (
	"encoding/binary"
	"net"
	"sync"

	"github.com/mdlayher/packet"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Sizes of the headers this package writes.
const (
	// vnetHdrLen is sizeof(struct virtio_net_hdr) (include/uapi/linux/
	// virtio_net.h), which PACKET_VNET_HDR puts in front of every frame.
	vnetHdrLen = 10
	// ethHdrLen is the Ethernet II header: two MACs and the ethertype.
	ethHdrLen = header.EthernetMinimumSize
)

// peer is the frontend a connection was dialled through. It is the gVisor
// endpoint's tcpip.PacketOwner, so every packet the endpoint sends carries
// it, for the endpoint's whole life (FIN_WAIT and TIME_WAIT after Close
// included); the owner is otherwise used only by iptables owner matching,
// which the probe stack does not configure.
type peer struct {
	mac  net.HardwareAddr
	addr net.Addr // *packet.Addr for WriteTo, built once
}

func newPeer(mac net.HardwareAddr) *peer {
	mac = append(net.HardwareAddr(nil), mac...)
	return &peer{mac: mac, addr: &packet.Addr{HardwareAddr: mac}}
}

// KUID implements tcpip.PacketOwner; probe packets have no user.
func (*peer) KUID() uint32 { return 0 }

// KGID implements tcpip.PacketOwner.
func (*peer) KGID() uint32 { return 0 }

// fragKey names the fragments of one outbound IP datagram.
type fragKey struct {
	v6 bool
	id uint32
}

type fragEntry struct {
	key  fragKey
	peer *peer
}

// fragSlots bounds the fragment-ID cache. gVisor writes the fragments of a
// datagram one after the other in one call chain (ipv4/ipv6 handleFragments),
// so an entry is needed only for the length of that chain; 64 covers as many
// concurrent fragmenting writers.
const fragSlots = 64

// link is the stack.LinkEndpoint of the probe stack. It needs no link
// resolution (no ARP, no NDP inside gVisor): the destination MAC comes from
// the packet's owner.
type link struct {
	s   *Stack
	mtu uint32

	mu         sync.RWMutex
	dispatcher stack.NetworkDispatcher

	txMu    sync.Mutex
	txBuf   []byte
	frags   [fragSlots]fragEntry
	fragPos int
}

var _ stack.LinkEndpoint = (*link)(nil)

func newLink(s *Stack, mtu uint32) *link {
	// A frame of the largest size gVisor may hand over (the MTU) plus the
	// headers this package writes.
	return &link{s: s, mtu: mtu, txBuf: make([]byte, vnetHdrLen+ethHdrLen+int(mtu))}
}

// MTU implements stack.LinkEndpoint: the interface's MTU.
func (l *link) MTU() uint32 { return l.mtu }

// SetMTU implements stack.LinkEndpoint; the MTU is fixed at the interface's.
func (l *link) SetMTU(uint32) {}

// MaxHeaderLength implements stack.LinkEndpoint. The Ethernet header is
// written into the transmit buffer, not pushed into the packet.
func (l *link) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements stack.LinkEndpoint.
func (l *link) LinkAddress() tcpip.LinkAddress { return tcpip.LinkAddress(l.s.cfg.MAC) }

// SetLinkAddress implements stack.LinkEndpoint; the address is fixed.
func (l *link) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.LinkEndpoint: none. No resolution (the MAC
// is per connection), and no checksum offload in either direction: gVisor
// computes every transmit checksum and verifies every received one (the
// reader completes the checksums a veth peer left to offload first; see
// completeChecksum).
func (l *link) Capabilities() stack.LinkEndpointCapabilities { return 0 }

// Attach implements stack.LinkEndpoint.
func (l *link) Attach(d stack.NetworkDispatcher) {
	l.mu.Lock()
	l.dispatcher = d
	l.mu.Unlock()
}

// IsAttached implements stack.LinkEndpoint.
func (l *link) IsAttached() bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.dispatcher != nil
}

// Wait implements stack.LinkEndpoint; the reader goroutine belongs to the
// Stack, which waits for it in Close.
func (l *link) Wait() {}

// ARPHardwareType implements stack.LinkEndpoint.
func (l *link) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareEther }

// AddHeader implements stack.LinkEndpoint; see MaxHeaderLength.
func (l *link) AddHeader(*stack.PacketBuffer) {}

// ParseHeader implements stack.LinkEndpoint; inbound packets are injected
// without their Ethernet header.
func (l *link) ParseHeader(*stack.PacketBuffer) bool { return true }

// Close implements stack.LinkEndpoint; the socket is closed by Stack.Close.
func (l *link) Close() {}

// SetOnCloseAction implements stack.LinkEndpoint.
func (l *link) SetOnCloseAction(func()) {}

// deliver hands one inbound IP packet to the stack.
func (l *link) deliver(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) bool {
	l.mu.RLock()
	d := l.dispatcher
	l.mu.RUnlock()
	if d == nil {
		return false
	}
	d.DeliverNetworkPacket(proto, pkt)
	return true
}

// WritePackets implements stack.LinkEndpoint: each packet goes out in its
// own frame to the MAC of its connection's frontend.
func (l *link) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	l.txMu.Lock()
	defer l.txMu.Unlock()
	n := 0
	for _, pkt := range pkts.AsSlice() {
		p := l.resolve(pkt)
		if p == nil {
			// Not an error for the caller: a reset for a segment of a
			// connection that no longer exists has nowhere to go, and
			// the frontend's own timers deal with it.
			l.s.stats.noPeer.Add(1)
			n++
			continue
		}
		var et uint16
		switch pkt.NetworkProtocolNumber {
		case ipv4.ProtocolNumber:
			et = uint16(header.IPv4ProtocolNumber)
		case ipv6.ProtocolNumber:
			et = uint16(header.IPv6ProtocolNumber)
		default:
			l.s.stats.noPeer.Add(1)
			n++
			continue
		}
		off := 0
		if l.s.vnet {
			// An all-zero virtio_net_hdr: no GSO, checksums complete.
			clear(l.txBuf[:vnetHdrLen])
			off = vnetHdrLen
		}
		copy(l.txBuf[off:], p.mac)
		copy(l.txBuf[off+6:], l.s.cfg.MAC)
		binary.BigEndian.PutUint16(l.txBuf[off+12:], et)
		hdr := off + ethHdrLen
		size := hdr + pkt.Size()
		if size > len(l.txBuf) {
			// gVisor never builds a packet above the link MTU.
			l.s.stats.writeErr.Add(1)
			return n, &tcpip.ErrMessageTooLong{}
		}
		// Copy the packet's views without AsSlices, which allocates.
		vl, skip := pkt.AsViewList()
		dst := l.txBuf[hdr:size]
		for v := vl.Front(); v != nil && len(dst) > 0; v = v.Next() {
			b := v.AsSlice()
			if skip >= len(b) {
				skip -= len(b)
				continue
			}
			dst = dst[copy(dst, b[skip:]):]
			skip = 0
		}
		if _, err := l.s.conn.WriteTo(l.txBuf[:size], p.addr); err != nil {
			l.s.stats.writeErr.Add(1)
			if l.s.closed() {
				return n, &tcpip.ErrClosedForSend{}
			}
			l.s.log.Warn("probe frame not sent", "to", p.mac.String(), "err", err)
			// A full socket buffer is transient; let TCP retransmit.
			n++
			continue
		}
		l.s.stats.framesOut.Add(1)
		n++
	}
	return n, nil
}

// resolve finds the frontend a packet goes to; l.txMu is held.
func (l *link) resolve(pkt *stack.PacketBuffer) *peer {
	if p, ok := pkt.Owner.(*peer); ok && p != nil {
		return p
	}
	// gVisor builds IP fragments as new packets without an owner. The
	// first fragment carries the UDP header, whose source port names the
	// connection; later fragments share its fragment ID (RFC 791, RFC 8200
	// section 4.5).
	nh := pkt.NetworkHeader().Slice()
	var (
		key      fragKey
		first    bool
		fragment bool
	)
	switch pkt.NetworkProtocolNumber {
	case ipv4.ProtocolNumber:
		h := header.IPv4(nh)
		if len(nh) < header.IPv4MinimumSize || h.Protocol() != uint8(header.UDPProtocolNumber) {
			return nil
		}
		if h.More() || h.FragmentOffset() != 0 {
			fragment, first, key = true, h.FragmentOffset() == 0, fragKey{id: uint32(h.ID())}
		}
	case ipv6.ProtocolNumber:
		if len(nh) < header.IPv6MinimumSize+header.IPv6FragmentHeaderSize {
			return nil
		}
		h := header.IPv6(nh)
		if h.NextHeader() != uint8(header.IPv6FragmentHeader) {
			return nil
		}
		f := header.IPv6Fragment(nh[header.IPv6MinimumSize:])
		if f.TransportProtocol() != header.UDPProtocolNumber {
			return nil
		}
		fragment, first, key = true, f.FragmentOffset() == 0, fragKey{v6: true, id: f.ID()}
	}
	if !fragment {
		return nil
	}
	if !first {
		for i := range l.frags {
			if e := &l.frags[i]; e.peer != nil && e.key == key {
				return e.peer
			}
		}
		return nil
	}
	b, ok := pkt.Data().PullUp(2)
	if !ok {
		return nil
	}
	l.s.portsMu.Lock()
	p := l.s.ports[portKey{netProto: pkt.NetworkProtocolNumber, port: binary.BigEndian.Uint16(b)}]
	l.s.portsMu.Unlock()
	if p != nil {
		l.frags[l.fragPos] = fragEntry{key: key, peer: p}
		l.fragPos = (l.fragPos + 1) % fragSlots
	}
	return p
}
