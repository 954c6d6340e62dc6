package dsrprobe

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Dialer dials connections whose frames go to one frontend's MAC. It is a
// small value, safe for concurrent use; the zero Dialer fails every dial
// with ErrClosed.
type Dialer struct {
	s   *Stack
	p   *peer
	err error
}

// Dialer returns a Dialer for the frontend with the given (real) MAC: every
// frame of the connections it dials, IP destination the VIP, goes out with
// that MAC as Ethernet destination, as the balancer forwards a client's
// frame to that frontend.
func (s *Stack) Dialer(frontendMAC net.HardwareAddr) Dialer {
	if len(frontendMAC) != 6 || frontendMAC[0]&1 != 0 {
		return Dialer{s: s, err: fmt.Errorf("%w: %v", ErrBadMAC, frontendMAC)}
	}
	return Dialer{s: s, p: newPeer(frontendMAC)}
}

// DialContext connects to address, a literal "IP:port" (IPv6 in brackets),
// over network "tcp", "tcp4", "tcp6", "udp", "udp4" or "udp6", from the probe
// source of the address's family. A TCP dial returns when the handshake
// completes, the frontend refuses it (the error matches syscall.ECONNREFUSED
// with errors.Is) or ctx ends (the error wraps ctx.Err()); a UDP dial binds
// an ephemeral port and returns at once. Errors are *net.OpError values
// wrapping this package's sentinels or a syscall.Errno.
func (d Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	opErr := func(err error) error {
		return &net.OpError{Op: "dial", Net: network, Addr: literalAddr(network, address), Err: err}
	}
	if d.s == nil {
		return nil, opErr(ErrClosed)
	}
	if d.err != nil {
		return nil, opErr(d.err)
	}
	s := d.s
	ap, err := netip.ParseAddrPort(address)
	if err != nil || ap.Port() == 0 || ap.Addr().Zone() != "" {
		return nil, opErr(fmt.Errorf("%w: %q", ErrBadAddress, address))
	}
	ip := ap.Addr().Unmap()
	var (
		transport tcpip.TransportProtocolNumber
		family    byte
	)
	switch network {
	case "tcp", "tcp4", "tcp6":
		transport = tcp.ProtocolNumber
	case "udp", "udp4", "udp6":
		transport = udp.ProtocolNumber
	default:
		return nil, opErr(fmt.Errorf("%w: %q", ErrBadNetwork, network))
	}
	if n := len(network); network[n-1] == '4' || network[n-1] == '6' {
		family = network[n-1]
	}
	var (
		proto tcpip.NetworkProtocolNumber
		raddr tcpip.Address
	)
	if ip.Is4() {
		if family == '6' {
			return nil, opErr(fmt.Errorf("%w: %s address %v", ErrBadNetwork, network, ip))
		}
		if s.src4.Len() == 0 {
			return nil, opErr(fmt.Errorf("%w: %v", ErrNoSource, ip))
		}
		proto, raddr = ipv4.ProtocolNumber, tcpip.AddrFrom4(ip.As4())
	} else {
		if family == '4' {
			return nil, opErr(fmt.Errorf("%w: %s address %v", ErrBadNetwork, network, ip))
		}
		if s.src6.Len() == 0 {
			return nil, opErr(fmt.Errorf("%w: %v", ErrNoSource, ip))
		}
		proto, raddr = ipv6.ProtocolNumber, tcpip.AddrFrom16(ip.As16())
	}
	if s.closed() {
		return nil, opErr(ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, opErr(err)
	}
	full := tcpip.FullAddress{NIC: nicID, Addr: raddr, Port: ap.Port()}
	if transport == tcp.ProtocolNumber {
		c, err := d.dialTCP(ctx, proto, full)
		if err != nil {
			return nil, opErr(err)
		}
		return c, nil
	}
	c, err := d.dialUDP(proto, full)
	if err != nil {
		return nil, opErr(err)
	}
	return c, nil
}

func (d Dialer) dialTCP(ctx context.Context, proto tcpip.NetworkProtocolNumber, full tcpip.FullAddress) (net.Conn, error) {
	s := d.s
	wq := new(waiter.Queue)
	ep, terr := s.stack.NewEndpoint(tcp.ProtocolNumber, proto, wq)
	if terr != nil {
		return nil, s.mapErr(terr)
	}
	// The owner must be set before Connect: the SYN is the first packet
	// that needs the frontend's MAC.
	ep.SetOwner(d.p)
	entry, notify := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	terr = ep.Connect(full)
	if _, started := terr.(*tcpip.ErrConnectStarted); started {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, ctx.Err()
		case <-s.done:
			ep.Close()
			return nil, ErrClosed
		case <-notify:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		return nil, s.mapErr(terr)
	}
	return gonet.NewTCPConn(wq, ep), nil
}

func (d Dialer) dialUDP(proto tcpip.NetworkProtocolNumber, full tcpip.FullAddress) (net.Conn, error) {
	s := d.s
	wq := new(waiter.Queue)
	ep, terr := s.stack.NewEndpoint(udp.ProtocolNumber, proto, wq)
	if terr != nil {
		return nil, s.mapErr(terr)
	}
	ep.SetOwner(d.p)
	// Connect binds an ephemeral port and fixes the destination.
	if terr := ep.Connect(full); terr != nil {
		ep.Close()
		return nil, s.mapErr(terr)
	}
	local, terr := ep.GetLocalAddress()
	if terr != nil {
		ep.Close()
		return nil, s.mapErr(terr)
	}
	key := portKey{netProto: proto, port: local.Port}
	s.portsMu.Lock()
	s.ports[key] = d.p
	s.portsMu.Unlock()
	return &udpConn{UDPConn: gonet.NewUDPConn(wq, ep), s: s, key: key}, nil
}

// udpConn releases its port's entry in Stack.ports on Close.
type udpConn struct {
	*gonet.UDPConn
	s   *Stack
	key portKey
}

// Close closes the connection; it is idempotent.
func (c *udpConn) Close() error {
	c.s.portsMu.Lock()
	delete(c.s.ports, c.key)
	c.s.portsMu.Unlock()
	return c.UDPConn.Close()
}

// mapErr turns a tcpip error into the closest syscall.Errno, so callers can
// test errors.Is(err, syscall.ECONNREFUSED) as with the kernel's sockets.
func (s *Stack) mapErr(e tcpip.Error) error {
	if s.closed() {
		return ErrClosed
	}
	switch e.(type) {
	case *tcpip.ErrConnectionRefused:
		return syscall.ECONNREFUSED
	case *tcpip.ErrConnectionReset:
		return syscall.ECONNRESET
	case *tcpip.ErrConnectionAborted, *tcpip.ErrAborted:
		return syscall.ECONNABORTED
	case *tcpip.ErrTimeout:
		return fmt.Errorf("%w: %w", os.ErrDeadlineExceeded, syscall.ETIMEDOUT)
	case *tcpip.ErrNetworkUnreachable:
		return syscall.ENETUNREACH
	case *tcpip.ErrHostUnreachable:
		return syscall.EHOSTUNREACH
	case *tcpip.ErrPortInUse, *tcpip.ErrNoPortAvailable:
		return syscall.EADDRNOTAVAIL
	}
	return fmt.Errorf("%w: %s", ErrStack, e)
}

// literalAddr renders the dial target for net.OpError without resolving it.
func literalAddr(network, address string) net.Addr {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil
	}
	if len(network) >= 3 && network[:3] == "udp" {
		return net.UDPAddrFromAddrPort(ap)
	}
	return net.TCPAddrFromAddrPort(ap)
}
