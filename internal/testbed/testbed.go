// Package testbed builds a throw-away layer-2 network out of Linux network
// namespaces for tests, for `l2lb demo` and for benchmarks: one namespace
// holding a Linux bridge (the "switch"), client namespaces and frontend
// namespaces, each attached to the bridge by a veth pair.
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
// 192.0.2.101-109) and frontends start at 192.0.2.11, so more than nine
// clients would collide with frontends. Frontends get disjoint
// ip_local_port_range slices of 50000-64999; fifteen keeps each slice at
// least 1000 ports wide.
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

// Subnet is the only subnet used; it is TEST-NET-1 (RFC 5737), reserved for
// documentation, so nothing here can collide with a real network.
var Subnet = netip.MustParsePrefix("192.0.2.0/24")

// DefaultVIP is the virtual IP used when Options.VIPs is empty.
var DefaultVIP = netip.MustParseAddr("192.0.2.200")

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
	// Logf, if set, receives progress messages.
	Logf func(string, ...any)
	// Timeout bounds dialing and each read or write of the client helpers
	// (an idle timeout, so long transfers are fine); default 5 s.
	Timeout time.Duration
	// ARPTimeout bounds ARPResolve; default 1 s.
	ARPTimeout time.Duration
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
	// VIPs are the virtual IPs configured on every frontend's lo.
	VIPs []netip.Addr

	opts Options

	mu         sync.Mutex
	closed     bool
	namespaces []string // every namespace we tried to create, in order
	closers    []func() // servers, captures, sockets to close in Close
}

// Host is one namespace of the bed.
type Host struct {
	// Name is the role: sw, c1, c2, f1, ...
	Name string
	// NS is the network namespace name (see `ip netns list`).
	NS string
	// Addr is the host's address on eth0 (invalid for the switch).
	Addr netip.Addr
	// Extra are further addresses on eth0 (clients get 192.0.2.101, ...).
	Extra []netip.Addr
	// MAC is the hardware address of Ifname.
	MAC net.HardwareAddr
	// Ifname is eth0 for clients and frontends, br0 for the switch.
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
	if len(o.VIPs) == 0 {
		o.VIPs = []netip.Addr{DefaultVIP}
	}
	used := map[netip.Addr]string{}
	for i := 1; i <= o.Clients; i++ {
		used[clientAddr(i)] = fmt.Sprintf("c%d", i)
		used[clientExtra(i)] = fmt.Sprintf("c%d", i)
	}
	for i := 1; i <= o.Frontends; i++ {
		used[frontendAddr(i)] = fmt.Sprintf("f%d", i)
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
	return nil
}

func clientAddr(i int) netip.Addr   { return netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}) }
func clientExtra(i int) netip.Addr  { return netip.AddrFrom4([4]byte{192, 0, 2, byte(100 + i)}) }
func frontendAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)}) }

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
	for i := 1; i <= opts.Clients; i++ {
		h := b.newHost(fmt.Sprintf("c%d", i), clientAddr(i))
		h.Extra = []netip.Addr{clientExtra(i)}
		b.Clients = append(b.Clients, h)
		if err := b.buildHost(h); err != nil {
			return nil, err
		}
		if err := hook(h.Name); err != nil {
			return nil, err
		}
	}
	for i := 1; i <= opts.Frontends; i++ {
		h := b.newHost(fmt.Sprintf("f%d", i), frontendAddr(i))
		h.PortRange = frontendPorts(i, opts.Frontends)
		b.Frontends = append(b.Frontends, h)
		if err := b.buildHost(h); err != nil {
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
	b.logf("testbed: %s up (%d clients, %d frontends, VIPs %v) in %v",
		b.Prefix, opts.Clients, opts.Frontends, b.VIPs, time.Since(start).Round(time.Millisecond))
	return b, nil
}

func (b *Bed) newHost(role string, addr netip.Addr) *Host {
	return &Host{Name: role, NS: b.Prefix + "-" + role, Addr: addr, Ifname: "eth0", bed: b}
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
	// STP off and forward delay 0 make ports forward as soon as they are up
	// (with STP disabled the kernel skips the listening/learning states,
	// IEEE 802.1D section 8.4); ageing_time stays at its default.
	if err := runIP("-n", sw.NS, "link", "add", "br0", "mtu", fmt.Sprint(MTU), "type", "bridge",
		"stp_state", "0", "forward_delay", "0"); err != nil {
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

func (b *Bed) buildHost(h *Host) error {
	if err := b.track(h.NS); err != nil {
		return err
	}
	sw := b.Switch.NS
	mtu := fmt.Sprint(MTU)
	steps := [][]string{
		{"netns", "add", h.NS},
		// The switch-side end is named after the role, the host side eth0.
		{"-n", sw, "link", "add", h.Name, "mtu", mtu, "type", "veth", "peer", "name", "eth0", "mtu", mtu, "netns", h.NS},
		{"-n", sw, "link", "set", h.Name, "master", "br0"},
		{"-n", sw, "link", "set", h.Name, "up"},
		{"-n", h.NS, "link", "set", "lo", "up"},
		{"-n", h.NS, "addr", "add", netip.PrefixFrom(h.Addr, Subnet.Bits()).String(), "dev", "eth0"},
	}
	for _, a := range h.Extra {
		steps = append(steps, []string{"-n", h.NS, "addr", "add", netip.PrefixFrom(a, Subnet.Bits()).String(), "dev", "eth0"})
	}
	steps = append(steps, []string{"-n", h.NS, "link", "set", "eth0", "up"})
	for _, s := range steps {
		if err := runIP(s...); err != nil {
			return err
		}
	}
	return nil
}

func (b *Bed) configureFrontend(h *Host) error {
	for _, v := range b.VIPs {
		if err := runIP("-n", h.NS, "addr", "add", netip.PrefixFrom(v, 32).String(), "dev", "lo"); err != nil {
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

// Hosts returns the switch, the clients and the frontends, in that order.
func (b *Bed) Hosts() []*Host {
	var hs []*Host
	if b.Switch != nil {
		hs = append(hs, b.Switch)
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

// FlushNeigh empties the host's neighbour (ARP) cache on its interface, so
// that the next packet to a VIP triggers a fresh ARP request.
func (h *Host) FlushNeigh() error {
	_, err := h.RunIP("neigh", "flush", "dev", h.Ifname)
	return err
}
