package testbed

import (
	"encoding/binary"
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
	// Trace holds the flow's last segments (at most traceLen, oldest first), so that a test
	// can show what a reset answered.
	Trace []Segment
}

// Segment is one TCP segment of a flow's Trace.
type Segment struct {
	// Sent is true for a segment the host sent, false for one it received.
	Sent bool
	// Flags are the TCP flags as tcpdump prints them (S, F, R, P, and . for ACK).
	Flags string
	// Seq, Ack and Len are the sequence and acknowledgement numbers and the payload length.
	Seq, Ack uint32
	Len      int
	// From is the Ethernet source.
	From [6]byte
}

// String formats the segment as "> [S.] seq 1 ack 2 len 0 from 02:..": > sent, < received.
func (s Segment) String() string {
	dir := "<"
	if s.Sent {
		dir = ">"
	}
	return fmt.Sprintf("%s [%s] seq %d ack %d len %d from %v", dir, s.Flags, s.Seq, s.Ack, s.Len, net.HardwareAddr(s.From[:]))
}

// traceLen is how many segments FlowStats.Trace keeps per flow: enough for a short
// connection's whole life (handshake, request, answer, both FINs) and a reset after it.
const traceLen = 12

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

// NDPAdvert is one neighbour advertisement seen on the wire (RFC 4861
// section 4.4), the IPv6 counterpart of an ARP reply.
type NDPAdvert struct {
	// IP is the target address: the address being answered for.
	IP netip.Addr
	// MAC is the target link-layer address option: the answer. It is nil
	// when the option is missing, which an answer to a unicast
	// solicitation may do (RFC 4861 section 7.2.4).
	MAC net.HardwareAddr
	// EthSrc is the Ethernet source address of the frame carrying it.
	EthSrc net.HardwareAddr
	// Dst is the IPv6 destination: who asked, or a multicast group for an
	// unsolicited advertisement.
	Dst netip.Addr
	// Router, Solicited and Override are the R, S and O flags.
	Router, Solicited, Override bool
}

// TooBig is one ICMP "fragmentation needed and DF set" (type 3 code 4, RFC
// 1191) or ICMPv6 Packet Too Big (RFC 8201, RFC 4443 section 3.2) seen on the
// wire.
type TooBig struct {
	// From is the message's source (the router), To its destination: the
	// source of the packet that was too big (a VIP for a DSR reply).
	From, To netip.Addr
	// EthSrc and EthDst are the Ethernet addresses of the frame carrying it.
	EthSrc, EthDst net.HardwareAddr
	// MTU is the next-hop MTU the router reports.
	MTU uint32
	// QuotedSrc and QuotedDst are the source and destination of the quoted
	// packet, with ports for TCP and UDP (0 otherwise or when cut short).
	QuotedSrc, QuotedDst netip.AddrPort
}

// CaptureStats is the result of a capture.
type CaptureStats struct {
	// Flows maps each TCP flow seen, IPv4 and IPv6, to its counters.
	Flows map[Flow]*FlowStats
	// Handshakes maps each connection attempt the host started (its SYN
	// was seen, or a SYN+ACK for it) to its counters.
	Handshakes map[Handshake]*HandshakeStats
	// ARPReplies lists every ARP reply seen, in order.
	ARPReplies []ARPReply
	// NDPAdverts lists every neighbour advertisement seen, in order.
	NDPAdverts []NDPAdvert
	// TooBigs lists every ICMP fragmentation-needed and ICMPv6 Packet Too
	// Big message seen, in order, whoever sent or received it.
	TooBigs []TooBig
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

// NDPAdvertsFor returns the neighbour advertisements that answered for ip.
func (s CaptureStats) NDPAdvertsFor(ip netip.Addr) []NDPAdvert {
	var out []NDPAdvert
	for _, a := range s.NDPAdverts {
		if a.IP == ip {
			out = append(out, a)
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

// Capture records TCP segments (IPv4 and IPv6), ARP replies, neighbour
// advertisements and ICMP too-big messages seen on one interface.
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

// decoders are the reusable layers of one capture's reader.
type decoders struct {
	eth   layers.Ethernet
	ip    layers.IPv4
	ip6   layers.IPv6
	tcp   layers.TCP
	arp   layers.ARP
	icmp  layers.ICMPv4
	icmp6 layers.ICMPv6
	na    layers.ICMPv6NeighborAdvertisement
}

func (c *Capture) run() {
	defer close(c.done)
	buf := make([]byte, 1<<16+64) // GSO frames on veth can reach 64 KiB
	var d decoders
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
		c.record(buf[:n], &d)
		c.mu.Unlock()
	}
}

// record decodes one frame; c.mu is held.
func (c *Capture) record(frame []byte, d *decoders) {
	df := gopacket.NilDecodeFeedback
	eth := &d.eth
	if eth.DecodeFromBytes(frame, df) != nil {
		return
	}
	switch eth.EthernetType {
	case layers.EthernetTypeARP:
		arp := &d.arp
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
		ip := &d.ip
		if ip.DecodeFromBytes(eth.Payload, df) != nil || ip.FragOffset != 0 {
			return
		}
		src, _ := netip.AddrFromSlice(ip.SrcIP.To4())
		dst, _ := netip.AddrFromSlice(ip.DstIP.To4())
		switch ip.Protocol {
		case layers.IPProtocolTCP:
			if d.tcp.DecodeFromBytes(ip.Payload, df) == nil {
				c.recordTCP(eth, src, dst, &d.tcp)
			}
		case layers.IPProtocolICMPv4:
			icmp := &d.icmp
			if icmp.DecodeFromBytes(ip.Payload, df) != nil ||
				icmp.TypeCode != layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodeFragmentationNeeded) {
				return
			}
			// RFC 1191 section 4: the next-hop MTU is the low 16 bits of
			// the second word, which gopacket calls Seq.
			tb := TooBig{From: src, To: dst, MTU: uint32(icmp.Seq)}
			tb.QuotedSrc, tb.QuotedDst = quoted(icmp.Payload, false)
			c.recordTooBig(eth, tb)
		}
	case layers.EthernetTypeIPv6:
		ip6 := &d.ip6
		if ip6.DecodeFromBytes(eth.Payload, df) != nil {
			return
		}
		src, _ := netip.AddrFromSlice(ip6.SrcIP)
		dst, _ := netip.AddrFromSlice(ip6.DstIP)
		switch ip6.NextHeader {
		case layers.IPProtocolTCP:
			if d.tcp.DecodeFromBytes(ip6.Payload, df) == nil {
				c.recordTCP(eth, src, dst, &d.tcp)
			}
		case layers.IPProtocolICMPv6:
			if a, ok := decodeNDPAdvert(eth, ip6, &d.icmp6, &d.na); ok {
				c.stats.NDPAdverts = append(c.stats.NDPAdverts, a)
				return
			}
			icmp := &d.icmp6
			if icmp.DecodeFromBytes(ip6.Payload, df) != nil || icmp.TypeCode.Type() != layers.ICMPv6TypePacketTooBig ||
				len(icmp.Payload) < 4 {
				return
			}
			tb := TooBig{From: src, To: dst, MTU: binary.BigEndian.Uint32(icmp.Payload[:4])}
			tb.QuotedSrc, tb.QuotedDst = quoted(icmp.Payload[4:], true)
			c.recordTooBig(eth, tb)
		}
	}
}

func (c *Capture) recordTooBig(eth *layers.Ethernet, tb TooBig) {
	tb.EthSrc = append(net.HardwareAddr(nil), eth.SrcMAC...)
	tb.EthDst = append(net.HardwareAddr(nil), eth.DstMAC...)
	c.stats.TooBigs = append(c.stats.TooBigs, tb)
}

// quoted returns the source and destination of the packet quoted in an ICMP
// error, with the TCP or UDP ports when the quote includes them.
func quoted(q []byte, v6 bool) (src, dst netip.AddrPort) {
	var (
		sa, da netip.Addr
		proto  byte
		l4     []byte
	)
	switch {
	case v6 && len(q) >= 40:
		sa, da = netip.AddrFrom16([16]byte(q[8:24])), netip.AddrFrom16([16]byte(q[24:40]))
		proto, l4 = q[6], q[40:]
	case !v6 && len(q) >= 20 && int(q[0]&0x0f)*4 >= 20 && len(q) >= int(q[0]&0x0f)*4:
		sa, da = netip.AddrFrom4([4]byte(q[12:16])), netip.AddrFrom4([4]byte(q[16:20]))
		proto, l4 = q[9], q[int(q[0]&0x0f)*4:]
	default:
		return
	}
	var sp, dp uint16
	if (proto == byte(layers.IPProtocolTCP) || proto == byte(layers.IPProtocolUDP)) && len(l4) >= 4 {
		sp, dp = binary.BigEndian.Uint16(l4[0:2]), binary.BigEndian.Uint16(l4[2:4])
	}
	return netip.AddrPortFrom(sa, sp), netip.AddrPortFrom(da, dp)
}

// recordTCP counts one TCP segment between src and dst; c.mu is held.
func (c *Capture) recordTCP(eth *layers.Ethernet, src, dst netip.Addr, tcp *layers.TCP) {
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
	if len(fs.Trace) == traceLen {
		copy(fs.Trace, fs.Trace[1:])
		fs.Trace = fs.Trace[:traceLen-1]
	}
	seg := Segment{Sent: sent, Flags: tcpFlags(tcp), Seq: tcp.Seq, Ack: tcp.Ack, Len: len(tcp.Payload)}
	copy(seg.From[:], eth.SrcMAC)
	fs.Trace = append(fs.Trace, seg)
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

// tcpFlagNames are the strings of Segment.Flags, indexed by SYN|FIN<<1|RST<<2|PSH<<3|ACK<<4,
// so that recording a segment allocates nothing.
var tcpFlagNames = func() (n [32]string) {
	for i := range n {
		for b, c := range "SFRP." {
			if i&(1<<b) != 0 {
				n[i] += string(c)
			}
		}
	}
	return n
}()

// tcpFlags names the segment's flags as tcpdump does.
func tcpFlags(t *layers.TCP) string {
	i := 0
	for b, on := range []bool{t.SYN, t.FIN, t.RST, t.PSH, t.ACK} {
		if on {
			i |= 1 << b
		}
	}
	return tcpFlagNames[i]
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
