// Package testbed builds a throw-away layer-2 network out of Linux network
// namespaces for tests, for `l2lb demo` and for benchmarks: one namespace
// holding a Linux bridge (the "switch"), client namespaces and frontend
// namespaces, each attached to the bridge by a veth pair.
//
// Every host has an IPv4 and an IPv6 address: 192.0.2.X/24 (RFC 5737) and
// 2001:db8::X/64 (RFC 3849, the same digits: f1 is 192.0.2.11 and
// 2001:db8::11). IPv6 addresses are added with nodad and the interfaces do no
// duplicate address detection, so every address, link-local ones included, is
// usable as soon as New returns. Every frontend holds the IPv4 VIPs as /32 and
// the IPv6 VIPs as /128 on lo.
//
// With Options.Router the clients sit behind a router namespace instead of on
// the switch: the router's eth0 is a switch port, its bridge br1 joins the
// clients (198.51.100.X/24 and 2001:db8:1::X/64), and the MTU of br1 can be
// lowered so that the router sends ICMP "fragmentation needed" and ICMPv6
// Packet Too Big towards the frontends, as a router between clients and a
// balancer does.
//
// Nothing on the host changes: every interface, address and sysctl lives in a
// namespace named l2lb-<pid>-<4 hex>-<role>, and Close (or, after a crash, the
// next New via Sweep) removes them. The package deliberately does not import
// "testing" so that the demo command can use it; callers pass a Logf instead.
package testbed

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Sentinel errors returned (wrapped) by this package.
var (
	// ErrNotRoot means the caller lacks the privileges needed to create
	// network namespaces.
	ErrNotRoot = errors.New("testbed: must run as root")
	// ErrMissingTool means a required external program (iproute2's ip) is
	// not installed.
	ErrMissingTool = errors.New("testbed: required tool not found")
	// ErrBadOptions means Options failed validation.
	ErrBadOptions = errors.New("testbed: invalid options")
	// ErrClosed means the Bed has been closed.
	ErrClosed = errors.New("testbed: bed is closed")
	// ErrTimeout means a helper gave up waiting for an answer.
	ErrTimeout = errors.New("testbed: timed out")
	// ErrMismatch means received data did not match what was expected
	// (wrong length or wrong SHA-256).
	ErrMismatch = errors.New("testbed: data mismatch")
	// ErrProtocol means a peer spoke something other than the name protocol.
	ErrProtocol = errors.New("testbed: protocol error")
	// ErrSysctl means a sysctl written inside a namespace did not read back
	// with the written value.
	ErrSysctl = errors.New("testbed: sysctl did not apply")
)

// Limits on the topology. Clients take 192.0.2.1-9 (extra addresses
// 192.0.2.101-109; 2001:db8::1-9 and 2001:db8::101-109) and frontends start
// at 192.0.2.11 (2001:db8::11), so more than nine clients would collide with
// frontends (behind a router the clients use the client subnets, with the
// same numbers). Frontends get disjoint ip_local_port_range slices of
// 50000-64999; fifteen keeps each slice at least 1000 ports wide.
const (
	// MaxClients is the largest Options.Clients.
	MaxClients = 9
	// MaxFrontends is the largest Options.Frontends.
	MaxFrontends = 15
)

// Default values used when an Options field is zero.
const (
	// DefaultFrontends is the number of frontends, as in the seed's examples.
	DefaultFrontends = 3
	// DefaultClients is the number of clients.
	DefaultClients = 2
	// DefaultTimeout is the client helpers' idle timeout.
	DefaultTimeout = 5 * time.Second
	// DefaultARPTimeout is how long ARPResolve waits for an answer.
	DefaultARPTimeout = time.Second
)

// MTU is the MTU of every veth; 1500 is the Ethernet default, so IP
// fragmentation and TSO behave as on an ordinary LAN.
const MTU = 1500

// Subnet is the IPv4 subnet of the switch; it is TEST-NET-1 (RFC 5737),
// reserved for documentation, so nothing here can collide with a real network.
var Subnet = netip.MustParsePrefix("192.0.2.0/24")

// Subnet6 is the IPv6 subnet of the switch, inside the documentation prefix
// 2001:db8::/32 (RFC 3849).
var Subnet6 = netip.MustParsePrefix("2001:db8::/64")

// ClientSubnet and ClientSubnet6 are the subnets of the clients behind the
// router (Options.Router); TEST-NET-2 (RFC 5737) and again RFC 3849. Without a
// router they are not used.
var (
	ClientSubnet  = netip.MustParsePrefix("198.51.100.0/24")
	ClientSubnet6 = netip.MustParsePrefix("2001:db8:1::/64")
)

// RouterHostPart is the last number of the router's addresses on both of its
// sides: 192.0.2.254 and 2001:db8::254 towards the switch, 198.51.100.254 and
// 2001:db8:1::254 (the clients' gateways) towards the clients.
const RouterHostPart = 254

// DefaultVIP is the virtual IP used when Options.VIPs is empty.
var DefaultVIP = netip.MustParseAddr("192.0.2.200")

// DefaultVIP6 is the IPv6 VIP of the default bed: the IPv6 VIPs default to
// 2001:db8::X for every 192.0.2.X of Options.VIPs.
var DefaultVIP6 = netip.MustParseAddr("2001:db8::200")

// NamePrefix starts the name of every namespace this package creates.
const NamePrefix = "l2lb-"

// Options configures New.
type Options struct {
	// Frontends is the number of frontend hosts (f1, f2, ...); default 3.
	Frontends int
	// Clients is the number of client hosts (c1, c2, ...); default 2.
	Clients int
	// VIPs are put as /32 on every frontend's lo; default [192.0.2.200].
	// Each must be inside Subnet and not collide with a host address.
	VIPs []netip.Addr
	// VIPs6 are put as /128 (nodad) on every frontend's lo next to VIPs;
	// default 2001:db8::X for each 192.0.2.X of VIPs ([2001:db8::200] for
	// the default VIP). Each must be inside Subnet6, not be a host address
	// nor the subnet-router anycast address 2001:db8::.
	VIPs6 []netip.Addr
	// Router, when set, puts the clients behind a router namespace (see the
	// package documentation); nil puts them on the switch.
	Router *RouterOptions
	// Logf, if set, receives progress messages.
	Logf func(string, ...any)
	// Timeout bounds dialing and each read or write of the client helpers
	// (an idle timeout, so long transfers are fine); default 5 s.
	Timeout time.Duration
	// ARPTimeout bounds ARPResolve and NDPResolve; default 1 s.
	ARPTimeout time.Duration
}

// RouterOptions configures the router between the clients and the switch.
type RouterOptions struct {
	// MTU is the MTU of the router's interface towards the clients (its
	// bridge br1), 1280 (the IPv6 minimum, RFC 8200) to 1500; default MTU.
	// The clients' own interfaces keep MTU 1500, so they announce full-size
	// TCP MSS and the frontends' full-size packets meet the smaller MTU at
	// the router, which answers them with ICMP "fragmentation needed" and
	// ICMPv6 Packet Too Big to their source (for DSR replies: the VIP).
	MTU int
}

// Bed is a running testbed. All fields are read-only after New.
type Bed struct {
	// Prefix is l2lb-<pid>-<4 hex>; every namespace is Prefix-<role>.
	Prefix string
	// Clients are c1, c2, ...
	Clients []*Host
	// Frontends are f1, f2, ...
	Frontends []*Host
	// Switch is the namespace holding bridge br0; it has no address.
	Switch *Host
	// VIPs are the IPv4 virtual IPs configured on every frontend's lo.
	VIPs []netip.Addr
	// VIPs6 are the IPv6 virtual IPs configured on every frontend's lo.
	VIPs6 []netip.Addr
	// Router is the router between clients and switch (role "rt"), nil
	// without Options.Router. Its Addr and Addr6 are on its eth0, a switch
	// port.
	Router *Host
	// ClientGateway and ClientGateway6 are the router's addresses on its
	// client side (the clients' default gateways); invalid without a router.
	ClientGateway, ClientGateway6 netip.Addr

	opts Options

	mu         sync.Mutex
	closed     bool
	namespaces []string // every namespace we tried to create, in order
	closers    []func() // servers, captures, sockets to close in Close
}

// Host is one namespace of the bed.
type Host struct {
	// Name is the role: sw, rt, c1, c2, f1, ...
	Name string
	// NS is the network namespace name (see `ip netns list`).
	NS string
	// Addr is the host's IPv4 address on eth0 (invalid for the switch).
	Addr netip.Addr
	// Extra are further IPv4 addresses on eth0 (clients get 192.0.2.101, ...).
	Extra []netip.Addr
	// Addr6 is the host's IPv6 address on eth0, 2001:db8::X for 192.0.2.X
	// (invalid for the switch). The interface has its link-local address
	// too.
	Addr6 netip.Addr
	// Extra6 are further IPv6 addresses on eth0 (clients get 2001:db8::101,
	// ...).
	Extra6 []netip.Addr
	// MAC is the hardware address of Ifname.
	MAC net.HardwareAddr
	// Ifname is eth0 for clients, frontends and the router, br0 for the
	// switch.
	Ifname string
	// Ifindex is the index of Ifname inside NS.
	Ifindex int
	// PortRange is the frontend's net.ipv4.ip_local_port_range; zero
	// for other hosts.
	PortRange [2]uint16

	bed *Bed

	names, downloads, uploads, datagrams atomic.Uint64
}

// Served counts the requests a host's name servers have answered. TCP
// requests are counted before the server closes the connection and
// datagrams before the reply is sent, so a client that has its answer sees
// the count.
type Served struct {
	Names, Downloads, Uploads, Datagrams uint64
}

// Served reports how many requests of each kind this host's ServeName
// servers have answered so far.
func (h *Host) Served() Served {
	return Served{
		Names:     h.names.Load(),
		Downloads: h.downloads.Load(),
		Uploads:   h.uploads.Load(),
		Datagrams: h.datagrams.Load(),
	}
}

// Bed returns the bed the host belongs to.
func (h *Host) Bed() *Bed { return h.bed }

// testHookAfterHost, when set by tests, runs after each host namespace is
// configured; an error makes New fail there, to test its clean-up.
var testHookAfterHost func(role string) error

func hook(role string) error {
	if testHookAfterHost == nil {
		return nil
	}
	return testHookAfterHost(role)
}

func (o *Options) normalize() error {
	if o.Frontends == 0 {
		o.Frontends = DefaultFrontends
	}
	if o.Clients == 0 {
		o.Clients = DefaultClients
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.ARPTimeout == 0 {
		o.ARPTimeout = DefaultARPTimeout
	}
	if o.Frontends < 1 || o.Frontends > MaxFrontends {
		return fmt.Errorf("%w: Frontends=%d, want 1..%d", ErrBadOptions, o.Frontends, MaxFrontends)
	}
	if o.Clients < 1 || o.Clients > MaxClients {
		return fmt.Errorf("%w: Clients=%d, want 1..%d", ErrBadOptions, o.Clients, MaxClients)
	}
	if o.Timeout < 0 || o.ARPTimeout < 0 {
		return fmt.Errorf("%w: negative timeout", ErrBadOptions)
	}
	if o.Router != nil {
		r := *o.Router // a copy: the caller's options stay as given
		if r.MTU == 0 {
			r.MTU = MTU
		}
		if r.MTU < 1280 || r.MTU > MTU {
			return fmt.Errorf("%w: Router.MTU=%d, want 1280..%d", ErrBadOptions, r.MTU, MTU)
		}
		o.Router = &r
	}
	if len(o.VIPs) == 0 {
		o.VIPs = []netip.Addr{DefaultVIP}
	}
	used := map[netip.Addr]string{}
	for i := 1; i <= o.Clients; i++ {
		a := o.clientAddrs(i)
		for _, x := range []netip.Addr{a.addr, a.extra, a.addr6, a.extra6} {
			used[x] = fmt.Sprintf("c%d", i)
		}
	}
	for i := 1; i <= o.Frontends; i++ {
		used[frontendAddr(i)] = fmt.Sprintf("f%d", i)
		used[mirror6(Subnet6, frontendAddr(i))] = fmt.Sprintf("f%d", i)
	}
	if o.Router != nil {
		used[routerAddr()] = "rt"
		used[mirror6(Subnet6, routerAddr())] = "rt"
	}
	seen := map[netip.Addr]bool{}
	for _, v := range o.VIPs {
		if !v.Is4() || !Subnet.Contains(v) {
			return fmt.Errorf("%w: VIP %v is not an IPv4 address in %v", ErrBadOptions, v, Subnet)
		}
		last := v.As4()[3]
		if last == 0 || last == 255 {
			return fmt.Errorf("%w: VIP %v is the network or broadcast address", ErrBadOptions, v)
		}
		if who, ok := used[v]; ok {
			return fmt.Errorf("%w: VIP %v is %s's address", ErrBadOptions, v, who)
		}
		if seen[v] {
			return fmt.Errorf("%w: VIP %v listed twice", ErrBadOptions, v)
		}
		seen[v] = true
	}
	if len(o.VIPs6) == 0 {
		for _, v := range o.VIPs {
			o.VIPs6 = append(o.VIPs6, mirror6(Subnet6, v))
		}
	} else {
		o.VIPs6 = slices.Clone(o.VIPs6)
	}
	for _, v := range o.VIPs6 {
		if !v.Is6() || v.Is4In6() || v.Zone() != "" || !Subnet6.Contains(v) {
			return fmt.Errorf("%w: IPv6 VIP %v is not an IPv6 address in %v", ErrBadOptions, v, Subnet6)
		}
		if v == Subnet6.Addr() {
			return fmt.Errorf("%w: IPv6 VIP %v is the subnet-router anycast address", ErrBadOptions, v)
		}
		if who, ok := used[v]; ok {
			return fmt.Errorf("%w: IPv6 VIP %v is %s's address", ErrBadOptions, v, who)
		}
		if seen[v] {
			return fmt.Errorf("%w: IPv6 VIP %v listed twice", ErrBadOptions, v)
		}
		seen[v] = true
	}
	return nil
}

// hostAddrs are the addresses of one client.
type hostAddrs struct{ addr, extra, addr6, extra6 netip.Addr }

// clientAddrs returns client i's addresses: on the switch's subnets, or on
// the client subnets behind a router.
func (o *Options) clientAddrs(i int) hostAddrs {
	p4, p6 := Subnet, Subnet6
	if o.Router != nil {
		p4, p6 = ClientSubnet, ClientSubnet6
	}
	a := hostAddrs{addr: hostAddr(p4, i), extra: hostAddr(p4, 100+i)}
	a.addr6, a.extra6 = mirror6(p6, a.addr), mirror6(p6, a.extra)
	return a
}

// hostAddr returns address number x of an IPv4 /24.
func hostAddr(p netip.Prefix, x int) netip.Addr {
	b := p.Addr().As4()
	b[3] = byte(x)
	return netip.AddrFrom4(b)
}

func frontendAddr(i int) netip.Addr { return hostAddr(Subnet, 10+i) }
func routerAddr() netip.Addr        { return hostAddr(Subnet, RouterHostPart) }

// mirror6 returns the IPv6 address of p whose last group spells the last
// number of a in decimal digits: 192.0.2.11 -> 2001:db8::11, so that the two
// addresses of a host read alike.
func mirror6(p netip.Prefix, a netip.Addr) netip.Addr {
	x, _ := strconv.ParseUint(strconv.Itoa(int(a.As4()[3])), 16, 16)
	b := p.Addr().As16()
	b[14], b[15] = byte(x>>8), byte(x)
	return netip.AddrFrom16(b)
}

// frontendPorts returns frontend i's (1-based) local port range. For up to
// three frontends it is the layout of the seed's step 7 (f1 50000-54000, f2
// 55000-59000, f3 60000-64000); beyond that 50000-64999 is split evenly. The
// ranges never overlap, so the balancer can tell from the destination port
// which frontend owns the reply to an outgoing connection.
func frontendPorts(i, n int) [2]uint16 {
	step := 5000
	if n > 3 {
		step = 15000 / n
	}
	lo := 50000 + (i-1)*step
	return [2]uint16{uint16(lo), uint16(lo + step*4/5)}
}

// New builds a bed. It first removes leftovers of interrupted runs (Sweep).
// On error, everything it created is removed again.
func New(opts Options) (_ *Bed, err error) {
	if err := opts.normalize(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("%w: ip (iproute2): %w", ErrMissingTool, err)
	}
	if err := Sweep(); err != nil {
		logf(opts.Logf, "testbed: sweeping leftovers: %v", err)
	}
	var rnd [2]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	b := &Bed{
		Prefix: fmt.Sprintf("%s%d-%s", NamePrefix, os.Getpid(), hex.EncodeToString(rnd[:])),
		VIPs:   append([]netip.Addr(nil), opts.VIPs...),
		VIPs6:  append([]netip.Addr(nil), opts.VIPs6...),
		opts:   opts,
	}
	defer func() {
		if err != nil {
			if cerr := b.Close(); cerr != nil {
				b.logf("testbed: cleaning up after failed New: %v", cerr)
			}
		}
	}()
	start := time.Now()
	if err := b.buildSwitch(); err != nil {
		return nil, err
	}
	// Clients attach to the switch, or to the router's client bridge.
	clientNS, clientBridge := b.Switch.NS, "br0"
	if opts.Router != nil {
		if err := b.buildRouter(); err != nil {
			return nil, err
		}
		if err := hook(b.Router.Name); err != nil {
			return nil, err
		}
		clientNS, clientBridge = b.Router.NS, "br1"
	}
	for i := 1; i <= opts.Clients; i++ {
		a := opts.clientAddrs(i)
		h := b.newHost(fmt.Sprintf("c%d", i), a.addr)
		h.Addr6 = a.addr6
		h.Extra = []netip.Addr{a.extra}
		h.Extra6 = []netip.Addr{a.extra6}
		b.Clients = append(b.Clients, h)
		if err := b.buildHost(h, clientNS, clientBridge); err != nil {
			return nil, err
		}
		if opts.Router != nil {
			if err := b.routeClient(h); err != nil {
				return nil, err
			}
		}
		if err := hook(h.Name); err != nil {
			return nil, err
		}
	}
	if opts.Router != nil {
		if err := b.setRouterMTU(); err != nil {
			return nil, err
		}
	}
	for i := 1; i <= opts.Frontends; i++ {
		h := b.newHost(fmt.Sprintf("f%d", i), frontendAddr(i))
		h.PortRange = frontendPorts(i, opts.Frontends)
		b.Frontends = append(b.Frontends, h)
		if err := b.buildHost(h, b.Switch.NS, "br0"); err != nil {
			return nil, err
		}
		if err := b.configureFrontend(h); err != nil {
			return nil, err
		}
		if err := hook(h.Name); err != nil {
			return nil, err
		}
	}
	for _, h := range b.Hosts() {
		if err := h.readLink(); err != nil {
			return nil, err
		}
	}
	via := ""
	if b.Router != nil {
		via = fmt.Sprintf(" behind a router (MTU %d)", opts.Router.MTU)
	}
	b.logf("testbed: %s up (%d clients%s, %d frontends, VIPs %v %v) in %v",
		b.Prefix, opts.Clients, via, opts.Frontends, b.VIPs, b.VIPs6, time.Since(start).Round(time.Millisecond))
	return b, nil
}

// newHost returns a host with IPv4 address addr; its IPv6 address defaults to
// the mirror of addr on Subnet6.
func (b *Bed) newHost(role string, addr netip.Addr) *Host {
	h := &Host{Name: role, NS: b.Prefix + "-" + role, Addr: addr, Ifname: "eth0", bed: b}
	if addr.IsValid() {
		h.Addr6 = mirror6(Subnet6, addr)
	}
	return h
}

// track records a namespace before it is created so that Close removes it
// even if creation fails half-way.
func (b *Bed) track(ns string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	b.namespaces = append(b.namespaces, ns)
	return nil
}

func (b *Bed) buildSwitch() error {
	sw := b.newHost("sw", netip.Addr{})
	sw.Ifname = "br0"
	b.Switch = sw
	if err := b.track(sw.NS); err != nil {
		return err
	}
	if err := runIP("netns", "add", sw.NS); err != nil {
		return err
	}
	// A plain switch: see bridgeArgs.
	if err := runIP(append([]string{"-n", sw.NS, "link", "add", "br0", "mtu", fmt.Sprint(MTU)}, bridgeArgs...)...); err != nil {
		return err
	}
	if err := runIP("-n", sw.NS, "link", "set", "lo", "up"); err != nil {
		return err
	}
	if err := runIP("-n", sw.NS, "link", "set", "br0", "up"); err != nil {
		return err
	}
	// With br_netfilter loaded, a new namespace starts with
	// bridge-nf-call-iptables=1, and the bridge then validates IPv4 headers
	// and drops malformed frames before forwarding them (net/bridge/
	// br_netfilter_hooks.c, br_validate_ipv4). The switch must be a plain L2
	// switch so malformed traffic reaches the balancer under test.
	for _, k := range []string{"arptables", "iptables", "ip6tables"} {
		key := "net.bridge.bridge-nf-call-" + k
		if _, err := sw.Sysctl(key); errors.Is(err, os.ErrNotExist) {
			continue // br_netfilter not loaded: nothing to turn off
		}
		if err := sw.SetSysctl(key, "0"); err != nil {
			return err
		}
	}
	return nil
}

// bridgeArgs make a bridge a plain switch: with STP off and forward delay 0
// ports forward as soon as they are up (with STP disabled the kernel skips the
// listening/learning states, IEEE 802.1D section 8.4); without multicast
// snooping every multicast frame, neighbour solicitations to solicited-node
// groups included, is flooded to every port, so a balancer that has joined no
// group still sees them. ageing_time stays at its default.
var bridgeArgs = []string{"type", "bridge", "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0"}

// buildHost creates h's namespace and its eth0, a veth whose other end, named
// after the role, is a port of bridge in namespace attachNS.
func (b *Bed) buildHost(h *Host, attachNS, bridge string) error {
	if err := b.track(h.NS); err != nil {
		return err
	}
	mtu := fmt.Sprint(MTU)
	steps := [][]string{
		{"netns", "add", h.NS},
		// The bridge-side end is named after the role, the host side eth0.
		{"-n", attachNS, "link", "add", h.Name, "mtu", mtu, "type", "veth", "peer", "name", "eth0", "mtu", mtu, "netns", h.NS},
		{"-n", attachNS, "link", "set", h.Name, "master", bridge},
		{"-n", attachNS, "link", "set", h.Name, "up"},
		{"-n", h.NS, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := runIP(s...); err != nil {
			return err
		}
	}
	// No duplicate address detection on eth0, so its link-local address is
	// usable at once too: the kernel solicits neighbours from it when a
	// reply leaves from a VIP on lo (hostcfg's namespace tests measured
	// that), and a tentative one would delay the first reply by a second.
	if err := h.SetSysctl("net.ipv6.conf.eth0.accept_dad", "0"); err != nil {
		return err
	}
	return b.addAddrs(h, "eth0")
}

// addAddrs puts h's addresses on dev and brings it up.
func (b *Bed) addAddrs(h *Host, dev string) error {
	var steps [][]string
	for _, a := range append([]netip.Addr{h.Addr}, h.Extra...) {
		steps = append(steps, []string{"-n", h.NS, "addr", "add", netip.PrefixFrom(a, Subnet.Bits()).String(), "dev", dev})
	}
	for _, a := range append([]netip.Addr{h.Addr6}, h.Extra6...) {
		steps = append(steps, []string{"-n", h.NS, "addr", "add", netip.PrefixFrom(a, Subnet6.Bits()).String(), "dev", dev, "nodad"})
	}
	steps = append(steps, []string{"-n", h.NS, "link", "set", dev, "up"})
	for _, s := range steps {
		if err := runIP(s...); err != nil {
			return err
		}
	}
	return nil
}

// buildRouter creates the router: eth0 on the switch, bridge br1 for the
// clients, forwarding on for both families.
func (b *Bed) buildRouter() error {
	r := b.newHost("rt", routerAddr())
	b.Router = r
	if err := b.buildHost(r, b.Switch.NS, "br0"); err != nil {
		return err
	}
	gw := &Host{NS: r.NS, Addr: hostAddr(ClientSubnet, RouterHostPart), Addr6: mirror6(ClientSubnet6, hostAddr(ClientSubnet, RouterHostPart))}
	b.ClientGateway, b.ClientGateway6 = gw.Addr, gw.Addr6
	if err := runIP(append([]string{"-n", r.NS, "link", "add", "br1", "mtu", fmt.Sprint(MTU)}, bridgeArgs...)...); err != nil {
		return err
	}
	if err := r.SetSysctl("net.ipv6.conf.br1.accept_dad", "0"); err != nil {
		return err
	}
	if err := b.addAddrs(gw, "br1"); err != nil {
		return err
	}
	for _, kv := range [][2]string{{"net.ipv4.ip_forward", "1"}, {"net.ipv6.conf.all.forwarding", "1"}} {
		if err := r.SetSysctl(kv[0], kv[1]); err != nil {
			return err
		}
	}
	return nil
}

// routeClient points the client's default routes at the router.
func (b *Bed) routeClient(h *Host) error {
	if err := runIP("-n", h.NS, "route", "add", "default", "via", b.ClientGateway.String()); err != nil {
		return err
	}
	return runIP("-n", h.NS, "-6", "route", "add", "default", "via", b.ClientGateway6.String())
}

// setRouterMTU sets br1's MTU once its ports exist: an MTU given when the
// bridge is created is replaced by the smallest port MTU as ports join, one
// set afterwards stays (net/bridge/br_if.c, br_mtu_auto_adjust).
func (b *Bed) setRouterMTU() error {
	mtu := b.opts.Router.MTU
	if err := runIP("-n", b.Router.NS, "link", "set", "br1", "mtu", fmt.Sprint(mtu)); err != nil {
		return err
	}
	return b.Router.Do(func() error {
		ifi, err := net.InterfaceByName("br1")
		if err != nil {
			return err
		}
		if ifi.MTU != mtu {
			return fmt.Errorf("testbed: %s: br1 MTU is %d, want %d", b.Router.NS, ifi.MTU, mtu)
		}
		return nil
	})
}

func (b *Bed) configureFrontend(h *Host) error {
	for _, v := range b.VIPs {
		if err := runIP("-n", h.NS, "addr", "add", netip.PrefixFrom(v, 32).String(), "dev", "lo"); err != nil {
			return err
		}
	}
	// IPv6 VIPs as `l2lb vip up` puts them there. A frontend does not answer
	// neighbour solicitations for them with the default sysctls
	// (proxy_ndp=0), the counterpart of arp_ignore=1 below; see hostcfg.Doctor.
	for _, v := range b.VIPs6 {
		if err := runIP("-n", h.NS, "addr", "add", netip.PrefixFrom(v, 128).String(), "dev", "lo", "nodad"); err != nil {
			return err
		}
	}
	if b.Router != nil {
		if err := runIP("-n", h.NS, "route", "add", ClientSubnet.String(), "via", b.Router.Addr.String()); err != nil {
			return err
		}
		if err := runIP("-n", h.NS, "-6", "route", "add", ClientSubnet6.String(), "via", b.Router.Addr6.String()); err != nil {
			return err
		}
	}
	sysctls := [][2]string{
		// Seed step 3: the VIP on lo must never be answered for in ARP
		// (arp_ignore=1: reply only for addresses on the receiving
		// interface) nor used as ARP source (arp_announce=2: use the best
		// local address of the outgoing interface); see the kernel's
		// Documentation/networking/ip-sysctl.rst.
		{"net.ipv4.conf.all.arp_ignore", "1"},
		{"net.ipv4.conf.eth0.arp_ignore", "1"},
		{"net.ipv4.conf.all.arp_announce", "2"},
		{"net.ipv4.conf.eth0.arp_announce", "2"},
		// Loose reverse-path filtering (RFC 3704 loose mode): strict mode
		// drops VIP packets the balancer re-injects on lo (design notes).
		// The kernel uses max(all, dev), so all three are set.
		{"net.ipv4.conf.all.rp_filter", "2"},
		{"net.ipv4.conf.lo.rp_filter", "2"},
		{"net.ipv4.conf.eth0.rp_filter", "2"},
		// Seed step 7: disjoint source-port ranges per frontend.
		{"net.ipv4.ip_local_port_range", fmt.Sprintf("%d %d", h.PortRange[0], h.PortRange[1])},
	}
	for _, s := range sysctls {
		if err := h.SetSysctl(s[0], s[1]); err != nil {
			return err
		}
	}
	return nil
}

// readLink fills MAC and Ifindex from inside the namespace.
func (h *Host) readLink() error {
	return h.Do(func() error {
		ifi, err := net.InterfaceByName(h.Ifname)
		if err != nil {
			return fmt.Errorf("testbed: %s: %w", h.NS, err)
		}
		h.MAC = ifi.HardwareAddr
		h.Ifindex = ifi.Index
		return nil
	})
}

// Hosts returns the switch, the router (if any), the clients and the
// frontends, in that order.
func (b *Bed) Hosts() []*Host {
	var hs []*Host
	if b.Switch != nil {
		hs = append(hs, b.Switch)
	}
	if b.Router != nil {
		hs = append(hs, b.Router)
	}
	hs = append(hs, b.Clients...)
	return append(hs, b.Frontends...)
}

// Host returns the host with the given role name (sw, c1, f2, ...), or nil.
func (b *Bed) Host(name string) *Host {
	for _, h := range b.Hosts() {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// HostByMAC returns the host whose interface has the given MAC, or nil.
func (b *Bed) HostByMAC(mac net.HardwareAddr) *Host {
	for _, h := range b.Hosts() {
		if h.MAC.String() == mac.String() {
			return h
		}
	}
	return nil
}

// Logf logs through Options.Logf, if set.
func (b *Bed) Logf(format string, args ...any) { b.logf(format, args...) }

func (b *Bed) logf(format string, args ...any) { logf(b.opts.Logf, format, args...) }

func logf(f func(string, ...any), format string, args ...any) {
	if f != nil {
		f(format, args...)
	}
}

// onClose registers fn to run in Close. If the bed is already closed it
// runs fn at once and returns ErrClosed.
func (b *Bed) onClose(fn func()) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		fn()
		return ErrClosed
	}
	b.closers = append(b.closers, fn)
	b.mu.Unlock()
	return nil
}

// Close stops the servers and captures started through the bed, kills every
// process still running inside its namespaces (including those started with
// Host.Command) and deletes the namespaces, which destroys their veths.
// It is safe to call more than once, concurrently, and from a signal
// handler's goroutine; later calls return nil.
func (b *Bed) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	closers, namespaces := b.closers, b.namespaces
	b.closers = nil
	b.mu.Unlock()

	for i := len(closers) - 1; i >= 0; i-- {
		closers[i]()
	}
	var errs []error
	for i := len(namespaces) - 1; i >= 0; i-- {
		ns := namespaces[i]
		if err := killNamespaceProcs(ns); err != nil {
			errs = append(errs, err)
		}
		if err := deleteNamespace(ns); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		b.logf("testbed: %s removed", b.Prefix)
	}
	return errors.Join(errs...)
}

// runIP runs iproute2's ip with args and returns its output in the error.
func runIP(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("testbed: ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// RunIP runs `ip -n NS args...` for the host and returns its standard output.
func (h *Host) RunIP(args ...string) ([]byte, error) {
	cmd := exec.Command("ip", append([]string{"-n", h.NS}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("testbed: ip -n %s %s: %w: %s", h.NS, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// FlushNeigh empties the host's neighbour cache on its interface, IPv4 (ARP)
// and IPv6 (NDP) entries alike, so that the next packet to a VIP triggers a
// fresh ARP request or neighbour solicitation. Permanent entries stay.
func (h *Host) FlushNeigh() error {
	_, err := h.RunIP("neigh", "flush", "dev", h.Ifname)
	return err
}
