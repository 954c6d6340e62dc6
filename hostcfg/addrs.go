// Package hostcfg holds the privileged host plumbing of l2lb behind narrow
// interfaces: VIPs as host addresses on the loopback device (/32 for IPv4, as
// the seed's ifvip-utils, ifup-lo and ifdown-lo scripts do, setup steps 2 and
// 5; /128 without duplicate address detection for IPv6), sysctls under
// /proc/sys/net, and a doctor that checks and fixes the settings the seed's
// setup steps 3 and 7, the design notes and IPv6 VIPs require.
//
// Everything here acts on the network namespace of the calling OS thread (or of
// the netlink handle given to NetlinkAddrsAt); callers that target another
// namespace must lock their goroutine to a thread inside it.
package hostcfg

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// LoopbackIface is the device that carries the VIPs: every frontend holds each
// VIP as a host address on lo (/32, /128) so the local stack accepts VIP
// traffic without answering ARP or neighbour solicitations for it (seed, setup
// step 2; see Doctor for what IPv6 relies on).
const LoopbackIface = "lo"

// ErrBadVIP reports a VIP that is neither an IPv4 nor an IPv6 address, or an
// IPv6 address with a zone (a VIP is never scoped to a link).
var ErrBadVIP = errors.New("not a usable VIP address")

// ErrNotIPv4 reported an IPv6 VIP while l2lb balanced IPv4 only.
//
// Deprecated: IPv6 VIPs are accepted now; an unusable VIP is reported with
// ErrBadVIP.
var ErrNotIPv4 = errors.New("not an IPv4 address")

// AddrManager lists, adds and removes interface addresses. It is an interface
// so that callers and tests can substitute a fake or a dry run.
type AddrManager interface {
	// List returns every address configured on ifname, IPv4 and IPv6.
	List(ifname string) ([]netip.Prefix, error)
	// Add configures p on ifname. The real manager adds IPv6 addresses with
	// IFA_F_NODAD (`ip address add ... nodad`), so they are usable at once:
	// hostcfg only ever adds VIPs, which must not wait for, or fail,
	// duplicate address detection.
	Add(ifname string, p netip.Prefix) error
	// Del removes p from ifname.
	Del(ifname string, p netip.Prefix) error
}

// nlAddrs implements AddrManager with rtnetlink.
type nlAddrs struct {
	h *netlink.Handle
}

// NetlinkAddrs returns the real AddrManager. It uses a netlink.Handle without
// pre-opened sockets, so every call opens its socket in the network namespace
// of the calling OS thread at that moment.
func NetlinkAddrs() AddrManager {
	return nlAddrs{h: &netlink.Handle{}}
}

// NetlinkAddrsAt returns an AddrManager that works through h, for example a
// handle from netlink.NewHandleAt bound to another network namespace. The
// caller keeps ownership of h and closes it.
func NetlinkAddrsAt(h *netlink.Handle) AddrManager {
	return nlAddrs{h: h}
}

// dumpRetries bounds retries of an address dump that the kernel marked as
// interrupted (NLM_F_DUMP_INTR: the address list changed while it was read).
const dumpRetries = 5

func (n nlAddrs) List(ifname string) ([]netip.Prefix, error) {
	link, err := n.h.LinkByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("link %s: %w", ifname, err)
	}
	var addrs []netlink.Addr
	for try := 0; ; try++ {
		addrs, err = n.h.AddrList(link, netlink.FAMILY_ALL)
		if err == nil || !errors.Is(err, netlink.ErrDumpInterrupted) || try == dumpRetries {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", ifname, err)
	}
	out := make([]netip.Prefix, 0, len(addrs))
	for _, a := range addrs {
		if p, ok := ipNetToPrefix(a.IPNet); ok {
			out = append(out, p)
		}
	}
	return out, nil
}

func (n nlAddrs) Add(ifname string, p netip.Prefix) error {
	link, err := n.h.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("link %s: %w", ifname, err)
	}
	if err := n.h.AddrAdd(link, &netlink.Addr{IPNet: prefixToIPNet(p), Flags: addFlags(p)}); err != nil {
		return fmt.Errorf("add %s to %s: %w", p, ifname, err)
	}
	return nil
}

func (n nlAddrs) Del(ifname string, p netip.Prefix) error {
	link, err := n.h.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("link %s: %w", ifname, err)
	}
	if err := n.h.AddrDel(link, &netlink.Addr{IPNet: prefixToIPNet(p)}); err != nil {
		return fmt.Errorf("delete %s from %s: %w", p, ifname, err)
	}
	return nil
}

// addFlags returns the address flags Add sets: IFA_F_NODAD for IPv6.
func addFlags(p netip.Prefix) int {
	if p.Addr().Is6() && !p.Addr().Is4In6() {
		return unix.IFA_F_NODAD
	}
	return 0
}

func ipNetToPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	ones, bits := n.Mask.Size()
	if bits == 0 || (a.Is4() && bits != 32) || (a.Is6() && bits != 128) {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	a := p.Addr()
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(p.Bits(), a.BitLen())}
}

// Change records what VIPsUp or VIPsDown did, or would do, for one VIP.
type Change struct {
	Addr netip.Addr
	// Action is "add" (alias added), "del" (alias removed), "keep" (already on
	// lo, left as is) or "absent" (not on lo, nothing to remove).
	Action string
}

// String renders a change as "add 192.0.2.200".
func (c Change) String() string { return c.Action + " " + c.Addr.String() }

// hostPrefix returns a as the host address configured on lo: /32 for IPv4
// (the seed's alias), /128 for IPv6.
func hostPrefix(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

// checkVIPs validates every VIP before anything is touched and returns them
// unmapped and without repeats, in input order.
func checkVIPs(vips []netip.Addr) ([]netip.Addr, error) {
	out := make([]netip.Addr, 0, len(vips))
	seen := make(map[netip.Addr]bool, len(vips))
	for _, v := range vips {
		u := v.Unmap()
		if !u.IsValid() || u.Zone() != "" {
			return nil, fmt.Errorf("VIP %v: %w", v, ErrBadVIP)
		}
		if !seen[u] {
			seen[u] = true
			out = append(out, u)
		}
	}
	return out, nil
}

// loHosts returns the host addresses on lo: IPv4 /32 and IPv6 /128. Like the
// seed's ifvip-utils, only those count: an address present with another
// prefix length is not a VIP alias and is neither reused nor removed.
func loHosts(m AddrManager) (map[netip.Addr]bool, error) {
	list, err := m.List(LoopbackIface)
	if err != nil {
		return nil, err
	}
	have := make(map[netip.Addr]bool, len(list))
	for _, p := range list {
		if a := p.Addr().Unmap(); p.Bits() == a.BitLen() {
			have[a] = true
		}
	}
	return have, nil
}

// VIPsUp adds every VIP missing from lo as a host address (IPv4 /32, IPv6 /128
// without duplicate address detection) and keeps those present,
// so running it twice changes nothing the second time. The changes are
// returned in input order (repeats dropped). On an error the changes made so
// far are returned with it.
func VIPsUp(m AddrManager, vips []netip.Addr) ([]Change, error) {
	vips, err := checkVIPs(vips)
	if err != nil {
		return nil, err
	}
	have, err := loHosts(m)
	if err != nil {
		return nil, err
	}
	changes := make([]Change, 0, len(vips))
	for _, v := range vips {
		if have[v] {
			changes = append(changes, Change{Addr: v, Action: "keep"})
			continue
		}
		if err := m.Add(LoopbackIface, hostPrefix(v)); err != nil {
			return changes, err
		}
		changes = append(changes, Change{Addr: v, Action: "add"})
	}
	return changes, nil
}

// VIPsDown removes those VIPs that are on lo as host addresses (/32, /128) and
// leaves every other address of lo alone (127.0.0.1, ::1, unlisted aliases,
// other prefix lengths). On an error the changes made so far are returned with it.
func VIPsDown(m AddrManager, vips []netip.Addr) ([]Change, error) {
	vips, err := checkVIPs(vips)
	if err != nil {
		return nil, err
	}
	have, err := loHosts(m)
	if err != nil {
		return nil, err
	}
	changes := make([]Change, 0, len(vips))
	for _, v := range vips {
		if !have[v] {
			changes = append(changes, Change{Addr: v, Action: "absent"})
			continue
		}
		if err := m.Del(LoopbackIface, hostPrefix(v)); err != nil {
			return changes, err
		}
		changes = append(changes, Change{Addr: v, Action: "del"})
	}
	return changes, nil
}

// VIPsList splits the VIPs into those present on lo as host addresses (/32,
// /128) and those missing, each in input order without repeats.
func VIPsList(m AddrManager, vips []netip.Addr) (present, missing []netip.Addr, err error) {
	vips, err = checkVIPs(vips)
	if err != nil {
		return nil, nil, err
	}
	have, err := loHosts(m)
	if err != nil {
		return nil, nil, err
	}
	for _, v := range vips {
		if have[v] {
			present = append(present, v)
		} else {
			missing = append(missing, v)
		}
	}
	return present, missing, nil
}

// dryAddrs lists through the real manager but only reports changes.
type dryAddrs struct {
	m   AddrManager
	log func(string)
}

// DryRun wraps m so that List still reads the real state while Add and Del
// only report the action ("would add 192.0.2.200/32 to lo", "would add
// 2001:db8::200/128 to lo (nodad)") through log and succeed. It backs the helper's -m option (seed, setup step 8), where the
// commands are handed to CGP for its log instead of being run. A nil log
// discards the messages.
func DryRun(m AddrManager, log func(string)) AddrManager {
	if log == nil {
		log = func(string) {}
	}
	return dryAddrs{m: m, log: log}
}

func (d dryAddrs) List(ifname string) ([]netip.Prefix, error) { return d.m.List(ifname) }

func (d dryAddrs) Add(ifname string, p netip.Prefix) error {
	msg := fmt.Sprintf("would add %s to %s", p, ifname)
	if addFlags(p)&unix.IFA_F_NODAD != 0 {
		msg += " (nodad)"
	}
	d.log(msg)
	return nil
}

func (d dryAddrs) Del(ifname string, p netip.Prefix) error {
	d.log(fmt.Sprintf("would delete %s from %s", p, ifname))
	return nil
}
