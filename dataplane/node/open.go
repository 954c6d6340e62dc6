package node

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/l2lb/l2lb/afpacket"
	"github.com/mdlayher/arp"
	"github.com/mdlayher/ndp"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Errors of Open.
var (
	// ErrNoInterface is returned when an interface Open needs does not exist.
	ErrNoInterface = errors.New("node: interface not found")
	// ErrInterfaceDown is returned when the interface is administratively down.
	ErrInterfaceDown = errors.New("node: interface is down")
)

// OpenConfig says which real sockets Open creates.
type OpenConfig struct {
	// Interface receives VIP traffic and sends forwarded frames.
	Interface string
	// Workers is the number of receive sockets, in one PACKET_FANOUT group when more than one
	// (default 1).
	Workers int
	// BusyPoll is how long a worker keeps polling its ring for the next frame before it sleeps
	// in poll(2): zero means afpacket.DefaultRing's, negative none.
	BusyPoll time.Duration
	// Coalesce is afpacket.RingConfig.Coalesce for the workers' rings: how long a wake-up that
	// finds few frames waits for more to share its batch (zero: none, the default).
	Coalesce time.Duration
	// VirtualMAC is added to the interface's unicast filter (PACKET_MR_UNICAST) for as long as
	// the sockets are open, so the NIC accepts frames to it (design notes).
	VirtualMAC net.HardwareAddr
	// FanoutGroup is the PACKET_FANOUT group ID of the workers' sockets; it must be unique on
	// the interface among running balancers (the process ID is a fine choice).
	FanoutGroup uint16
}

// Open opens the real sockets of one fast-path life: a TPACKET_V2 ring per worker bound to
// ETH_P_ALL on the interface with PACKET_VNET_HDR, PACKET_IGNORE_OUTGOING and the virtual MAC's
// membership; a transmit-only socket on lo; and an ARP client on the interface. On error nothing
// stays open. The sockets belong to the calling thread's network namespace.
func Open(c OpenConfig) (Sockets, error) {
	if c.Workers <= 0 {
		c.Workers = 1
	}
	ifi, err := fastPathInterface(c.Interface)
	if err != nil {
		return Sockets{}, err
	}
	lo, err := loopback()
	if err != nil {
		return Sockets{}, err
	}
	s := Sockets{MAC: ifi.HardwareAddr, Info: SocketsInfo{Backend: "afpacket"}}
	rings, err := openRings(ifi, c, nil)
	if err != nil {
		return Sockets{}, err
	}
	s.Workers = rings
	loSock, err := afpacket.Open(afpacket.Config{Ifindex: lo.Index, Protocol: 0, VnetHdr: true})
	if err != nil {
		s.Close()
		return Sockets{}, fmt.Errorf("node: open %s: %w", lo.Name, err)
	}
	s.Lo = loSock
	client, err := arp.Dial(ifi)
	if err != nil {
		s.Close()
		return Sockets{}, fmt.Errorf("node: ARP client on %s: %w", ifi.Name, err)
	}
	s.ARP = &resolver{ifi: ifi, arp: client, timeout: ResolveTimeout}
	return s, nil
}

// fastPathInterface returns the interface a fast path can open on: it exists, has an Ethernet
// address and is up. A packet socket bound to a device that is down opens, but carries
// ENETDOWN at once (packet_do_bind in net/packet/af_packet.c): both backends refuse it here, so
// that the caller backs off instead of reopening in a loop.
func fastPathInterface(name string) (*net.Interface, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrNoInterface, name, err)
	}
	if len(ifi.HardwareAddr) != 6 {
		return nil, fmt.Errorf("%w: %s has no Ethernet address", ErrNoInterface, name)
	}
	if ifi.Flags&net.FlagUp == 0 {
		return nil, fmt.Errorf("%w: %s", ErrInterfaceDown, name)
	}
	return ifi, nil
}

// openRings opens c.Workers TPACKET_V2 receive rings on ifi, in one PACKET_FANOUT group when
// more than one, with the socket filter filter (nil: every frame). On error none stays open.
func openRings(ifi *net.Interface, c OpenConfig, filter []bpf.RawInstruction) ([]RxSocket, error) {
	ring := afpacket.DefaultRing()
	switch {
	case c.BusyPoll > 0:
		ring.BusyPoll = c.BusyPoll
	case c.BusyPoll < 0:
		ring.BusyPoll = 0
	}
	ring.Coalesce = c.Coalesce
	var rings []RxSocket
	for i := 0; i < c.Workers; i++ {
		ac := afpacket.Config{
			Ifindex: ifi.Index, Protocol: unix.ETH_P_ALL, VnetHdr: true, IgnoreOutgoing: true,
			QdiscBypass: true, UnicastMACs: []net.HardwareAddr{c.VirtualMAC}, Ring: ring, Filter: filter,
		}
		if c.Workers > 1 {
			// PACKET_FANOUT_HASH, not _CPU: measured with l2lb bench pps (issue 14, 2 workers,
			// 2 runs each) _CPU delivered 209-231 k frames/s against 238-253 k for _HASH, as on
			// veth a frame arrives on the sending CPU, which is one generator's for a whole
			// burst. _QM (by recorded receive queue) suits a multi-queue NIC and was not
			// measured: on veth the queue is only meaningful in its NAPI (XDP or GRO) mode.
			ac.FanoutGroup, ac.FanoutMode = c.FanoutGroup, unix.PACKET_FANOUT_HASH
		}
		sock, err := afpacket.Open(ac)
		if err != nil {
			for _, r := range rings {
				r.Close()
			}
			return nil, fmt.Errorf("node: open %s: %w", ifi.Name, err)
		}
		rings = append(rings, sock)
	}
	return rings, nil
}

func loopback() (*net.Interface, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("node: listing interfaces: %w", err)
	}
	for i := range ifs {
		if ifs[i].Flags&net.FlagLoopback != 0 {
			return &ifs[i], nil
		}
	}
	return nil, fmt.Errorf("%w: no loopback interface", ErrNoInterface)
}

// resolver is the real Resolver: ARP for IPv4 members, NDP (RFC 4861 §7.2.2: a solicitation to
// the target's solicited-node group, answered by an advertisement) for IPv6 ones, each resolution
// bounded by timeout. The NDP socket (an ICMPv6 socket on the interface's link-local address,
// github.com/mdlayher/ndp) is opened at the first IPv6 member, so an IPv4-only balancer needs no
// IPv6 on its interface.
type resolver struct {
	ifi     *net.Interface
	arp     *arp.Client
	timeout time.Duration

	mu     sync.Mutex // Close may run while Resolve waits
	ndp    *ndp.Conn
	closed bool
}

// Resolve implements Resolver.
func (r *resolver) Resolve(ip netip.Addr) (net.HardwareAddr, error) {
	deadline := time.Now().Add(r.timeout)
	if ip.Is4() {
		if err := r.arp.SetDeadline(deadline); err != nil {
			return nil, err
		}
		return r.arp.Resolve(ip)
	}
	c, err := r.ndpConn()
	if err != nil {
		return nil, err
	}
	group, err := ndp.SolicitedNodeMulticast(ip)
	if err != nil {
		return nil, err
	}
	if err := c.SetDeadline(deadline); err != nil {
		return nil, err
	}
	ns := &ndp.NeighborSolicitation{TargetAddress: ip,
		Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Source, Addr: r.ifi.HardwareAddr}}}
	if err := c.WriteTo(ns, nil, group); err != nil {
		return nil, fmt.Errorf("node: neighbour solicitation for %v: %w", ip, err)
	}
	for {
		m, _, _, err := c.ReadFrom()
		if err != nil {
			return nil, fmt.Errorf("node: no neighbour advertisement for %v: %w", ip, err)
		}
		na, ok := m.(*ndp.NeighborAdvertisement)
		if !ok || na.TargetAddress != ip {
			continue
		}
		for _, o := range na.Options {
			if l, ok := o.(*ndp.LinkLayerAddress); ok && l.Direction == ndp.Target && len(l.Addr) == 6 {
				return l.Addr, nil
			}
		}
	}
}

// ndpConn returns the NDP socket, opening it the first time.
func (r *resolver) ndpConn() (*ndp.Conn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, net.ErrClosed
	}
	if r.ndp == nil {
		c, _, err := ndp.Listen(r.ifi, ndp.LinkLocal)
		if err != nil {
			return nil, fmt.Errorf("node: NDP on %s: %w", r.ifi.Name, err)
		}
		r.ndp = c
	}
	return r.ndp, nil
}

// Close implements Resolver.
func (r *resolver) Close() error {
	err := r.arp.Close()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	if r.ndp != nil {
		r.ndp.Close()
	}
	return err
}
