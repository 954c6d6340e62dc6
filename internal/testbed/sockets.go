package testbed

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/packet"
)

// network returns base+"6" ("tcp6", "udp6") for an IPv6 address and base+"4"
// otherwise, the invalid address (the wildcard) included, so that a socket
// bound to an unspecified address stays IPv4 as it always was here.
func network(base string, a netip.Addr) string {
	if a.Is6() && !a.Is4In6() {
		return base + "6"
	}
	return base + "4"
}

// DialTCP connects from laddr to raddr with a socket created inside the
// host's namespace; raddr's family (IPv4 or IPv6) selects the socket's. An
// invalid laddr address lets the kernel choose; a zero port picks an
// ephemeral port from the namespace's ip_local_port_range (shared by IPv4
// and IPv6).
func (h *Host) DialTCP(laddr, raddr netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() error {
		d := net.Dialer{Timeout: timeout}
		if laddr.Addr().IsValid() {
			d.LocalAddr = net.TCPAddrFromAddrPort(laddr)
		}
		var err error
		c, err = d.Dial(network("tcp", raddr.Addr()), raddr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("testbed: %s: dial %v->%v: %w", h.Name, laddr, raddr, timeoutErr(err))
	}
	return c, nil
}

func (h *Host) dial(laddr netip.Addr, raddr netip.AddrPort) (net.Conn, error) {
	var la netip.AddrPort
	if laddr.IsValid() {
		la = netip.AddrPortFrom(laddr, 0)
	}
	return h.DialTCP(la, raddr, h.bed.opts.Timeout)
}

// ListenTCP listens on addr inside the host's namespace: an IPv6 address
// gives an IPv6 socket; an invalid address listens on every IPv4 address
// (0.0.0.0), netip.IPv6Unspecified() on every IPv6 address (an IPv6-only
// socket).
func (h *Host) ListenTCP(addr netip.AddrPort) (*net.TCPListener, error) {
	var ln *net.TCPListener
	err := h.Do(func() error {
		var err error
		ln, err = net.ListenTCP(network("tcp", addr.Addr()), net.TCPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("testbed: %s: listen tcp %v: %w", h.Name, addr, err)
	}
	return ln, nil
}

// ListenUDP binds a UDP socket to addr inside the host's namespace; the
// family follows addr as for ListenTCP.
func (h *Host) ListenUDP(addr netip.AddrPort) (*net.UDPConn, error) {
	var uc *net.UDPConn
	err := h.Do(func() error {
		var err error
		uc, err = net.ListenUDP(network("udp", addr.Addr()), net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("testbed: %s: listen udp %v: %w", h.Name, addr, err)
	}
	return uc, nil
}

// RawConn opens an AF_PACKET raw socket on the host's interface for
// injecting arbitrary Ethernet frames with WriteTo(frame,
// &packet.Addr{HardwareAddr: dst}). It is bound to protocol 0, so it
// receives nothing (packet(7)) and a flood does not fill its buffer with
// copies of its own frames. Close closes it if the caller has not.
func (h *Host) RawConn() (*packet.Conn, error) {
	var c *packet.Conn
	err := h.Do(func() error {
		ifi, err := net.InterfaceByName(h.Ifname)
		if err != nil {
			return err
		}
		c, err = packet.Listen(ifi, packet.Raw, 0, nil)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("testbed: %s: raw socket on %s: %w", h.Name, h.Ifname, err)
	}
	if err := h.bed.onClose(func() { c.Close() }); err != nil {
		return nil, err
	}
	return c, nil
}

// arpRetry is how often ARPResolve repeats its request; RFC 1122 section
// 2.3.2.1 asks for no more than one request per second per address in
// normal operation, but on a private test switch a faster retry keeps a
// lost frame from costing the whole timeout.
const arpRetry = 250 * time.Millisecond

// solicit sends a request every arpRetry until recv reports the answer or Options.ARPTimeout
// has passed; recv reads one frame and reports whether it was the answer. It is the one
// retry loop of ARPResolve and NDPResolve.
func (h *Host) solicit(send func() error, setDeadline func(time.Time) error, recv func() (bool, error)) (bool, error) {
	deadline := time.Now().Add(h.bed.opts.ARPTimeout)
	for time.Now().Before(deadline) {
		if err := send(); err != nil {
			return false, err
		}
		wait := time.Now().Add(arpRetry)
		if wait.After(deadline) {
			wait = deadline
		}
		if err := setDeadline(wait); err != nil {
			return false, err
		}
		for {
			done, err := recv()
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil || done {
				return done, err
			}
		}
	}
	return false, nil
}

// ARPResolve asks for ip's MAC with ARP requests sent from the host's
// interface (using its first IPv4 address as sender), independently of the
// kernel's neighbour cache. It fails with ErrTimeout when nobody answers
// within Options.ARPTimeout.
func (h *Host) ARPResolve(ip netip.Addr) (net.HardwareAddr, error) {
	var mac net.HardwareAddr
	err := h.Do(func() error {
		ifi, err := net.InterfaceByName(h.Ifname)
		if err != nil {
			return err
		}
		c, err := arp.Dial(ifi)
		if err != nil {
			return err
		}
		defer c.Close()
		found, err := h.solicit(func() error { return c.Request(ip) }, c.SetReadDeadline, func() (bool, error) {
			p, _, err := c.Read()
			if err != nil {
				return false, err
			}
			if p.Operation == arp.OperationReply && p.SenderIP == ip {
				mac = p.SenderHardwareAddr
				return true, nil
			}
			return false, nil
		})
		if err == nil && !found {
			err = fmt.Errorf("%w: no ARP reply for %v within %v", ErrTimeout, ip, h.bed.opts.ARPTimeout)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("testbed: %s: ARP %v: %w", h.Name, ip, err)
	}
	return mac, nil
}
