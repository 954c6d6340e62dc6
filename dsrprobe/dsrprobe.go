// Package dsrprobe gives Go code TCP and UDP connections to a VIP whose frames
// go out with one chosen frontend's MAC as Ethernet destination: the path a
// client's frame takes through a layer-2 direct-server-return balancer. A
// health check dialled through it tests what clients get (the VIP on the
// frontend's lo, its listener, its reply path) rather than the frontend's
// real address.
//
// The kernel cannot do this on the balancer node: the VIPs are local there
// (on lo), so a connect() to a VIP never leaves the host. The package
// therefore runs a userspace TCP/IP stack (gVisor's tcpip, the one Tailscale
// and wireguard-go use) with its own source address, the probe source, which
// must be an unused address of the LAN subnet, configured on no host
// interface. The stack sits on one AF_PACKET socket on the interface:
//
//   - It answers ARP requests (RFC 826) and IPv6 neighbour solicitations
//     (RFC 4861 section 7.2.4) for the probe source with Config.MAC, so the
//     frontends' replies, routed normally to the probe source, come back to
//     that MAC.
//   - Config.MAC is meant to be the balancer's virtual MAC. The socket adds
//     it to the interface's unicast filter (PACKET_ADD_MEMBERSHIP with
//     PACKET_MR_UNICAST, packet(7)); the kernel classifies frames to it as
//     PACKET_OTHERHOST and drops them in ip_rcv without processing, so the
//     host's own stack never answers, forwards or resets the probe traffic;
//     only this package's socket acts on it (see the design notes on the
//     virtual MAC).
//   - Outbound packets get an Ethernet header with source Config.MAC and
//     destination the MAC of the frontend the connection was dialled
//     through. The MAC travels with the gVisor endpoint itself (as its
//     packet owner), so the FIN, the retransmissions and the last ACK sent
//     after Close still go to the right frontend; IP fragments, which gVisor
//     builds without an owner, are matched through the UDP connection's local
//     port and the fragment ID.
//
// Only the active balancer probes: open the Stack when checks are configured
// and close it at stop.
package dsrprobe

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// Sentinel errors returned (wrapped) by this package.
var (
	// ErrBadConfig means Config (or the interface it names) failed
	// validation; the wrapped message says why.
	ErrBadConfig = errors.New("dsrprobe: invalid config")
	// ErrClosed is returned by dials on a Stack that has been closed.
	ErrClosed = errors.New("dsrprobe: stack closed")
	// ErrBadAddress means the dial address is not a literal IP:port.
	ErrBadAddress = errors.New("dsrprobe: address must be a literal IP:port")
	// ErrBadNetwork means the network is not one of tcp, tcp4, tcp6, udp,
	// udp4, udp6, or does not match the address's family.
	ErrBadNetwork = errors.New("dsrprobe: unsupported network")
	// ErrNoSource means the stack has no probe source address of the
	// address's family (Config.Source4 or Config.Source6 is unset).
	ErrNoSource = errors.New("dsrprobe: no probe source address for this family")
	// ErrBadMAC means the frontend MAC given to Dialer is not a 6-byte
	// unicast Ethernet address.
	ErrBadMAC = errors.New("dsrprobe: frontend MAC must be a 6-byte unicast address")
	// ErrStack wraps an error reported by the userspace TCP/IP stack that
	// has no closer standard equivalent.
	ErrStack = errors.New("dsrprobe: tcpip")
)

// Config configures a Stack.
type Config struct {
	// Interface is the name of the LAN interface (Listen only; New takes
	// the interface itself).
	Interface string
	// MAC is the Ethernet address the probe stack answers ARP and NDP with
	// and sends from: the balancer's virtual MAC, so that the kernel treats
	// the replies as PACKET_OTHERHOST and leaves them alone. It must be a
	// 6-byte unicast address.
	MAC net.HardwareAddr
	// Source4 is the probe source IPv4 address: on the LAN subnet and
	// configured on no interface. Invalid (the zero value) disables IPv4
	// probes.
	Source4 netip.Addr
	// Source6 is the probe source IPv6 address, with the same rules;
	// invalid disables IPv6 probes. It must not be link-local (a zone
	// cannot be chosen per dial) nor multicast.
	Source6 netip.Addr
	// Log receives warnings about unexpected socket errors; nil discards
	// them.
	Log *slog.Logger
}

// Stats are cumulative counters of a Stack, for the status page and metrics.
type Stats struct {
	// FramesIn counts frames read from the socket (after the BPF filter).
	FramesIn uint64
	// FramesOut counts frames written to the socket, ARP and NDP answers
	// included.
	FramesOut uint64
	// PacketsInjected counts IP packets handed to the TCP/IP stack.
	PacketsInjected uint64
	// ARPAnswered counts ARP replies sent for Source4.
	ARPAnswered uint64
	// NDPAnswered counts neighbour advertisements sent for Source6.
	NDPAnswered uint64
	// RxChecksumPartial counts received frames whose transport checksum
	// the sending host had left to offload (virtio_net_hdr
	// VIRTIO_NET_HDR_F_NEEDS_CSUM): frames from a veth peer or from this
	// host. Their checksum is completed (as the kernel's skb_checksum_help
	// does) before the stack verifies it.
	RxChecksumPartial uint64
	// RxGSO counts received GSO/GRO super-frames (larger than the MTU),
	// handed to the stack whole.
	RxGSO uint64
	// DropMalformed counts received frames too short or inconsistent to
	// parse.
	DropMalformed uint64
	// DropNotForUs counts received frames that passed the BPF filter but
	// are not for the probe stack (possible only with a fake connection or
	// during the instant before the filter is attached).
	DropNotForUs uint64
	// DropNoPeer counts outbound packets that belong to no dialled
	// connection (for example a reset the stack sends for a segment to a
	// closed port): there is no frontend MAC to send them to.
	DropNoPeer uint64
	// DropWriteError counts outbound frames the socket refused.
	DropWriteError uint64
	// ReadErrors counts failed socket reads other than the one that ends
	// the Stack.
	ReadErrors uint64
}

type counters struct {
	framesIn, framesOut, injected, arp, ndp, partial, gso atomic.Uint64
	malformed, notForUs, noPeer, writeErr, readErr        atomic.Uint64
}

// nicID is the only NIC of the probe stack.
const nicID tcpip.NICID = 1

// Stack is a userspace TCP/IP stack attached to one interface. Its methods
// are safe for concurrent use.
type Stack struct {
	cfg     Config
	log     *slog.Logger
	ifi     net.Interface
	conn    net.PacketConn
	vnet    bool
	stack   *stack.Stack
	link    *link
	src4    tcpip.Address
	src6    tcpip.Address
	stats   counters
	done    chan struct{} // closed by Close
	readerW sync.WaitGroup

	closeOnce sync.Once
	closeErr  error

	portsMu sync.Mutex
	// ports maps an open UDP connection's local port to its peer, for IP
	// fragments (see link.resolve).
	ports map[portKey]*peer
}

type portKey struct {
	netProto tcpip.NetworkProtocolNumber
	port     uint16
}

// New builds a Stack that reads and writes Ethernet frames on conn, which
// must be attached to ifi: each ReadFrom returns one whole frame and each
// WriteTo sends one (the net.PacketConn of github.com/mdlayher/packet in raw
// mode, or a fake in tests). The Stack owns conn and closes it in Close.
// Frames carry no virtio_net_hdr, so every received checksum is verified.
// Listen opens the real socket.
func New(conn net.PacketConn, ifi *net.Interface, cfg Config) (*Stack, error) {
	return newStack(conn, ifi, cfg, false)
}

func (cfg *Config) validate(ifi *net.Interface) error {
	if ifi == nil {
		return fmt.Errorf("%w: no interface", ErrBadConfig)
	}
	if len(cfg.MAC) != 6 || cfg.MAC[0]&1 != 0 {
		return fmt.Errorf("%w: MAC %v is not a 6-byte unicast address", ErrBadConfig, cfg.MAC)
	}
	if !cfg.Source4.IsValid() && !cfg.Source6.IsValid() {
		return fmt.Errorf("%w: neither Source4 nor Source6 is set", ErrBadConfig)
	}
	if a := cfg.Source4; a.IsValid() && (!a.Is4() || a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255})) {
		return fmt.Errorf("%w: Source4 %v is not a unicast IPv4 address", ErrBadConfig, a)
	}
	if a := cfg.Source6; a.IsValid() && (!a.Is6() || a.Is4In6() || a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || a.IsLinkLocalUnicast()) {
		return fmt.Errorf("%w: Source6 %v is not a global or unique-local unicast IPv6 address", ErrBadConfig, a)
	}
	// An Ethernet MTU below the IPv4 minimum of 68 (RFC 791) or above what
	// an IP packet can carry makes no sense; IPv6 needs 1280 (RFC 8200
	// section 5).
	if ifi.MTU < 68 || ifi.MTU > 65535 {
		return fmt.Errorf("%w: interface %s has MTU %d", ErrBadConfig, ifi.Name, ifi.MTU)
	}
	if cfg.Source6.IsValid() && ifi.MTU < header.IPv6MinimumMTU {
		return fmt.Errorf("%w: interface %s has MTU %d, IPv6 needs %d (RFC 8200)", ErrBadConfig, ifi.Name, ifi.MTU, header.IPv6MinimumMTU)
	}
	return nil
}

func newStack(conn net.PacketConn, ifi *net.Interface, cfg Config, vnet bool) (*Stack, error) {
	if conn == nil {
		return nil, fmt.Errorf("%w: no connection", ErrBadConfig)
	}
	if err := cfg.validate(ifi); err != nil {
		return nil, err
	}
	cfg.MAC = append(net.HardwareAddr(nil), cfg.MAC...)
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Stack{
		cfg:   cfg,
		log:   log.With("component", "dsrprobe", "interface", ifi.Name),
		ifi:   *ifi,
		conn:  conn,
		vnet:  vnet,
		done:  make(chan struct{}),
		ports: map[portKey]*peer{},
	}
	if cfg.Source4.IsValid() {
		s.src4 = tcpip.AddrFrom4(cfg.Source4.As4())
	}
	if cfg.Source6.IsValid() {
		s.src6 = tcpip.AddrFrom16(cfg.Source6.As16())
	}
	s.link = newLink(s, uint32(ifi.MTU))
	s.stack = stack.New(stack.Options{
		NetworkProtocols: []stack.NetworkProtocolFactory{
			// IGMP stays off (the default): the probe stack joins no group.
			ipv4.NewProtocol,
			ipv6.NewProtocolWithOptions(ipv6.Options{
				// No router solicitations, no RA processing, no SLAAC
				// and (DADConfigs zero) no duplicate address detection:
				// the probe source is given, and this package answers
				// neighbour solicitations itself. MLD stays off too.
				NDPConfigs: ipv6.NDPConfigurations{HandleRAs: ipv6.HandlingRAsDisabled},
			}),
		},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	if err := s.setupStack(); err != nil {
		s.stack.Destroy()
		_ = conn.Close()
		return nil, err
	}
	s.readerW.Add(1)
	go s.readLoop()
	return s, nil
}

func (s *Stack) setupStack() error {
	// SACK (RFC 2018) helps the 1 MB transfers of a check recover from a
	// lost frame without a timeout; gVisor leaves it off by default.
	sack := tcpip.TCPSACKEnabled(true)
	if err := s.stack.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); err != nil {
		return fmt.Errorf("%w: enable SACK: %s", ErrStack, err)
	}
	if err := s.stack.CreateNIC(nicID, s.link); err != nil {
		return fmt.Errorf("%w: create NIC: %s", ErrStack, err)
	}
	var routes []tcpip.Route
	add := func(proto tcpip.NetworkProtocolNumber, a tcpip.Address, all tcpip.Subnet) error {
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: a.WithPrefix()}
		if err := s.stack.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			return fmt.Errorf("%w: add address %v: %s", ErrStack, a, err)
		}
		// Every destination is "on link": the link endpoint needs no
		// neighbour resolution, it takes the frontend's MAC from the
		// connection instead.
		routes = append(routes, tcpip.Route{Destination: all, NIC: nicID})
		return nil
	}
	if s.src4.Len() != 0 {
		if err := add(ipv4.ProtocolNumber, s.src4, header.IPv4EmptySubnet); err != nil {
			return err
		}
	}
	if s.src6.Len() != 0 {
		if err := add(ipv6.ProtocolNumber, s.src6, header.IPv6EmptySubnet); err != nil {
			return err
		}
	}
	s.stack.SetRouteTable(routes)
	return nil
}

// Stats returns a snapshot of the counters.
func (s *Stack) Stats() Stats {
	c := &s.stats
	return Stats{
		FramesIn:          c.framesIn.Load(),
		FramesOut:         c.framesOut.Load(),
		PacketsInjected:   c.injected.Load(),
		ARPAnswered:       c.arp.Load(),
		NDPAnswered:       c.ndp.Load(),
		RxChecksumPartial: c.partial.Load(),
		RxGSO:             c.gso.Load(),
		DropMalformed:     c.malformed.Load(),
		DropNotForUs:      c.notForUs.Load(),
		DropNoPeer:        c.noPeer.Load(),
		DropWriteError:    c.writeErr.Load(),
		ReadErrors:        c.readErr.Load(),
	}
}

// MAC returns the configured source MAC.
func (s *Stack) MAC() net.HardwareAddr { return append(net.HardwareAddr(nil), s.cfg.MAC...) }

// Source4 returns the probe source IPv4 address (invalid if none).
func (s *Stack) Source4() netip.Addr { return s.cfg.Source4 }

// Source6 returns the probe source IPv6 address (invalid if none).
func (s *Stack) Source6() netip.Addr { return s.cfg.Source6 }

// Close aborts every connection (TCP connections are reset, so the frontends
// free them at once), stops the stack and closes the socket. Dials in
// progress fail with ErrClosed; reads and writes on connections fail. It is
// idempotent and safe to call concurrently.
func (s *Stack) Close() error {
	s.closeOnce.Do(func() {
		close(s.done)
		// Abort first, while the socket is still open, so the resets
		// reach the frontends.
		s.stack.Close()
		s.stack.Wait()
		s.stack.RemoveNIC(nicID)
		s.closeErr = s.conn.Close()
		s.readerW.Wait()
		s.portsMu.Lock()
		clear(s.ports)
		s.portsMu.Unlock()
		if s.closeErr != nil {
			s.closeErr = fmt.Errorf("dsrprobe: close socket: %w", s.closeErr)
		}
	})
	return s.closeErr
}

func (s *Stack) closed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}
