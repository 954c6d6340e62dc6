package testbed

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

// captureBuffer is the receive buffer of a capture socket. Hundreds of
// connections in a burst make thousands of frames; the default (212992
// bytes, net.core.rmem_default) would overflow while the reader decodes.
const captureBuffer = 32 << 20

// captureDrain is how long Stop keeps reading after it is called, to pick
// up frames still queued in the socket.
const captureDrain = 100 * time.Millisecond

// Flow identifies a TCP connection from the capturing host's point of view:
// Local is the host's side (for a client, client ip:port), Remote the peer
// (for a client, vip:port).
type Flow struct {
	Local, Remote netip.AddrPort
}

// FlowStats counts what a capture saw of one flow.
type FlowStats struct {
	// SYNsSent counts SYN segments without ACK sent by the host.
	SYNsSent int
	// SYNACKs counts SYN+ACK segments received by the host.
	SYNACKs int
	// SYNACKMACs holds the Ethernet source of each SYN+ACK received, in
	// order; in DSR it is the MAC of the frontend that answered.
	SYNACKMACs []net.HardwareAddr
	// RSTsSent and RSTsReceived count segments with RST set.
	RSTsSent, RSTsReceived int
}

// Handshake identifies one connection attempt: a flow and the initial
// sequence number of the host's SYN. A 4-tuple can be reused by a later
// connection (the client side of a connection the server closed first holds
// no TIME-WAIT state, RFC 793 section 3.5), but each attempt has its own
// ISN; a retransmitted SYN repeats it.
type Handshake struct {
	Flow Flow
	ISN  uint32
}

// HandshakeStats counts the segments of one handshake.
type HandshakeStats struct {
	// SYNs counts the SYNs sent with this ISN (more than one means the
	// SYN was retransmitted).
	SYNs int
	// SYNACKs counts SYN+ACKs received acknowledging ISN+1.
	SYNACKs int
	// SYNACKMACs holds the Ethernet source of each of those SYN+ACKs.
	SYNACKMACs []net.HardwareAddr
}

// ARPReply is one ARP reply seen on the wire.
type ARPReply struct {
	// IP is the sender protocol address: the address being answered for.
	IP netip.Addr
	// MAC is the sender hardware address: the answer.
	MAC net.HardwareAddr
	// EthSrc is the Ethernet source address of the frame carrying it.
	EthSrc net.HardwareAddr
	// Target is the target protocol address (who asked).
	Target netip.Addr
}

// CaptureStats is the result of a capture.
type CaptureStats struct {
	// Flows maps each TCP flow seen to its counters.
	Flows map[Flow]*FlowStats
	// Handshakes maps each connection attempt the host started (its SYN
	// was seen, or a SYN+ACK for it) to its counters.
	Handshakes map[Handshake]*HandshakeStats
	// ARPReplies lists every ARP reply seen, in order.
	ARPReplies []ARPReply
	// Frames is the number of frames read.
	Frames int
	// Dropped is the number of frames the kernel dropped because the
	// capture socket's buffer was full (PACKET_STATISTICS, packet(7)); a
	// non-zero value means the counts are incomplete.
	Dropped uint32
}

// ARPRepliesFor returns the ARP replies that answered for ip.
func (s CaptureStats) ARPRepliesFor(ip netip.Addr) []ARPReply {
	var out []ARPReply
	for _, r := range s.ARPReplies {
		if r.IP == ip {
			out = append(out, r)
		}
	}
	return out
}

// RSTs returns the total number of RST segments seen, in both directions.
func (s CaptureStats) RSTs() int {
	n := 0
	for _, f := range s.Flows {
		n += f.RSTsSent + f.RSTsReceived
	}
	return n
}

// Capture records TCP segments and ARP replies seen on one interface.
type Capture struct {
	h     *Host
	conn  *packet.Conn
	local map[netip.Addr]bool
	done  chan struct{}
	once  sync.Once

	mu    sync.Mutex
	stats CaptureStats
	err   error
}

// Capture starts recording on the named interface of the host (usually
// h.Ifname) with an AF_PACKET socket bound to ETH_P_ALL, which sees frames
// in both directions. Direction is decided by the host's own addresses
// (taken when the capture starts, lo's VIPs included). Stop ends it; Close
// also stops it.
func (h *Host) Capture(ifname string) (*Capture, error) {
	c := &Capture{
		h:     h,
		local: map[netip.Addr]bool{},
		done:  make(chan struct{}),
		stats: CaptureStats{Flows: map[Flow]*FlowStats{}, Handshakes: map[Handshake]*HandshakeStats{}},
	}
	err := h.Do(func() error {
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				c.local[p.Addr().Unmap()] = true
			}
		}
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		c.conn, err = packet.Listen(ifi, packet.Raw, unix.ETH_P_ALL, nil)
		if err != nil {
			return err
		}
		rc, err := c.conn.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := rc.Control(func(fd uintptr) {
			// SO_RCVBUFFORCE (socket(7)) lets root exceed net.core.rmem_max.
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, captureBuffer)
		}); err != nil {
			return err
		}
		return serr
	})
	if err != nil {
		if c.conn != nil {
			c.conn.Close()
		}
		return nil, fmt.Errorf("testbed: %s: capture on %s: %w", h.Name, ifname, err)
	}
	go c.run()
	if err := h.bed.onClose(func() { c.Stop() }); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Capture) run() {
	defer close(c.done)
	buf := make([]byte, 1<<16+64) // GSO frames on veth can reach 64 KiB
	var (
		eth layers.Ethernet
		ip  layers.IPv4
		tcp layers.TCP
		arp layers.ARP
	)
	for {
		n, _, err := c.conn.ReadFrom(buf)
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				c.mu.Lock()
				c.err = err
				c.mu.Unlock()
			}
			return
		}
		c.mu.Lock()
		c.stats.Frames++
		c.record(buf[:n], &eth, &ip, &tcp, &arp)
		c.mu.Unlock()
	}
}

// record decodes one frame; c.mu is held.
func (c *Capture) record(frame []byte, eth *layers.Ethernet, ip *layers.IPv4, tcp *layers.TCP, arp *layers.ARP) {
	df := gopacket.NilDecodeFeedback
	if eth.DecodeFromBytes(frame, df) != nil {
		return
	}
	switch eth.EthernetType {
	case layers.EthernetTypeARP:
		if arp.DecodeFromBytes(eth.Payload, df) != nil || arp.Operation != layers.ARPReply {
			return
		}
		sip, ok1 := netip.AddrFromSlice(arp.SourceProtAddress)
		tip, ok2 := netip.AddrFromSlice(arp.DstProtAddress)
		if !ok1 || !ok2 {
			return
		}
		c.stats.ARPReplies = append(c.stats.ARPReplies, ARPReply{
			IP:     sip,
			MAC:    append(net.HardwareAddr(nil), arp.SourceHwAddress...),
			EthSrc: append(net.HardwareAddr(nil), eth.SrcMAC...),
			Target: tip,
		})
	case layers.EthernetTypeIPv4:
		if ip.DecodeFromBytes(eth.Payload, df) != nil || ip.Protocol != layers.IPProtocolTCP || ip.FragOffset != 0 {
			return
		}
		if tcp.DecodeFromBytes(ip.Payload, df) != nil {
			return
		}
		src, _ := netip.AddrFromSlice(ip.SrcIP.To4())
		dst, _ := netip.AddrFromSlice(ip.DstIP.To4())
		sap := netip.AddrPortFrom(src, uint16(tcp.SrcPort))
		dap := netip.AddrPortFrom(dst, uint16(tcp.DstPort))
		var (
			fl   Flow
			sent bool
		)
		switch {
		case c.local[src] && !c.local[dst]:
			fl, sent = Flow{Local: sap, Remote: dap}, true
		case c.local[dst] && !c.local[src]:
			fl = Flow{Local: dap, Remote: sap}
		default:
			return // not ours, or host-internal
		}
		fs := c.stats.Flows[fl]
		if fs == nil {
			fs = &FlowStats{}
			c.stats.Flows[fl] = fs
		}
		switch {
		case tcp.SYN && !tcp.ACK && sent:
			fs.SYNsSent++
			c.handshake(Handshake{fl, tcp.Seq}).SYNs++
		case tcp.SYN && tcp.ACK && !sent:
			mac := append(net.HardwareAddr(nil), eth.SrcMAC...)
			fs.SYNACKs++
			fs.SYNACKMACs = append(fs.SYNACKMACs, mac)
			// The SYN+ACK acknowledges ISN+1 (RFC 793 section 3.4).
			hs := c.handshake(Handshake{fl, tcp.Ack - 1})
			hs.SYNACKs++
			hs.SYNACKMACs = append(hs.SYNACKMACs, mac)
		}
		if tcp.RST {
			if sent {
				fs.RSTsSent++
			} else {
				fs.RSTsReceived++
			}
		}
	}
}

func (c *Capture) handshake(k Handshake) *HandshakeStats {
	hs := c.stats.Handshakes[k]
	if hs == nil {
		hs = &HandshakeStats{}
		c.stats.Handshakes[k] = hs
	}
	return hs
}

// HandshakesOf returns the handshakes seen on flow f.
func (s CaptureStats) HandshakesOf(f Flow) []*HandshakeStats {
	var out []*HandshakeStats
	for k, hs := range s.Handshakes {
		if k.Flow == f {
			out = append(out, hs)
		}
	}
	return out
}

// Stop ends the capture after reading what is still queued, and returns
// the counts. Later calls return the same counts.
func (c *Capture) Stop() CaptureStats {
	c.once.Do(func() {
		_ = c.conn.SetReadDeadline(time.Now().Add(captureDrain))
		<-c.done
		if st, err := c.conn.Stats(); err == nil {
			c.mu.Lock()
			c.stats.Dropped = st.Drops
			c.mu.Unlock()
		}
		c.conn.Close()
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// Err reports a read error that ended the capture early, if any.
func (c *Capture) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}
