package cluster

import (
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/l2lb/l2lb/balancer"
	"github.com/l2lb/l2lb/hostcfg"
)

// Flags are the command-line settings of a standalone group node (`l2lb run --peers ...`).
type Flags struct {
	Peers       listFlag
	Name        string
	Addr        string
	Bind        string
	Priority    int
	Preempt     bool
	HealthPorts listFlag
	SyncPeers   listFlag
	GossipKey   string
}

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// Register defines the flags on fs.
func (f *Flags) Register(fs *flag.FlagSet) {
	fs.Var(&f.Peers, "peers", "standalone cluster: other nodes' membership addresses `HOST[:PORT]` (comma-separated or repeated); members and the active node then come from the cluster instead of --member")
	fs.StringVar(&f.Name, "name", "", "cluster: this node's unique name (default: its address)")
	fs.StringVar(&f.Addr, "addr", "", "cluster: this node's real IPv4 address (default: the first IPv4 address of -i)")
	fs.StringVar(&f.Bind, "bind", "", "cluster: membership listen address `ADDR:PORT` (default ADDR:7946, TCP and UDP)")
	fs.IntVar(&f.Priority, "priority", 100, "cluster: election priority 0-255; the highest alive and healthy node is active (ties: name)")
	fs.BoolVar(&f.Preempt, "preempt", false, "cluster: a returning higher-priority node takes the active role back once its table is synced")
	fs.Var(&f.HealthPorts, "health-port", "cluster: this node's own service port to probe with TCP connects (repeatable); an unhealthy node gets no new flows")
	fs.Var(&f.SyncPeers, "sync-peer", "cluster: send sync messages to this unicast `ADDR:PORT` instead of multicast (repeatable)")
	fs.StringVar(&f.GossipKey, "gossip-key-file", "", "cluster: file holding a 16, 24 or 32-byte key that encrypts membership gossip (unencrypted without it)")
}

// Enabled reports whether the flags ask for a standalone cluster.
func (f *Flags) Enabled() bool { return len(f.Peers) > 0 }

// Apply completes the balancer's configuration for a group node (its name, the sync channel's
// local address and unicast peers, keeping leaving members' flows) and returns the node's
// configuration; iface is -i and selfWeight -r.
func (f *Flags) Apply(bc *balancer.Config, selfWeight int, log *slog.Logger) (Config, error) {
	var cc Config
	addr, err := nodeAddr(f.Addr, bc.Interface)
	if err != nil {
		return cc, err
	}
	if f.Priority < 0 || f.Priority > 255 {
		return cc, fmt.Errorf("--priority %d: want 0-255", f.Priority)
	}
	if bc.Name == "" {
		bc.Name = addr.String()
	}
	if bc.Sync == nil {
		return cc, fmt.Errorf("%w: a group node needs the sync channel", ErrConfig)
	}
	bc.Sync.Local = addr
	for _, p := range f.SyncPeers {
		ap, err := netip.ParseAddrPort(p)
		if err != nil {
			return cc, fmt.Errorf("--sync-peer %q: %w", p, err)
		}
		bc.Sync.Peers = append(bc.Sync.Peers, ap)
	}
	bc.KeepVanishedPersistence = true
	cc = Config{Name: bc.Name, Addr: addr, Weight: 100, SelfWeight: uint32(selfWeight),
		Priority: uint8(f.Priority), Preempt: f.Preempt, Log: log}
	if ifi, err := net.InterfaceByName(bc.Interface); err == nil {
		cc.MAC = ifi.HardwareAddr
	}
	for _, p := range f.Peers {
		for _, one := range strings.Split(p, ",") {
			if one = strings.TrimSpace(one); one != "" {
				cc.Peers = append(cc.Peers, one)
			}
		}
	}
	if f.Bind != "" {
		if cc.Bind, err = netip.ParseAddrPort(f.Bind); err != nil {
			return cc, fmt.Errorf("--bind %q: %w", f.Bind, err)
		}
	}
	for _, p := range f.HealthPorts {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return cc, fmt.Errorf("--health-port %q: not a port", p)
		}
		cc.HealthPorts = append(cc.HealthPorts, uint16(n))
	}
	if f.GossipKey != "" {
		if cc.ClusterKey, err = balancer.ReadKey(f.GossipKey); err != nil {
			return cc, err
		}
	}
	return cc, nil
}

// nodeAddr returns the --addr value or the first IPv4 address of the interface.
func nodeAddr(flagVal, iface string) (netip.Addr, error) {
	if flagVal != "" {
		a, err := netip.ParseAddr(flagVal)
		if err != nil || !a.Is4() {
			return netip.Addr{}, fmt.Errorf("--addr %q: not an IPv4 address", flagVal)
		}
		return a, nil
	}
	a, err := hostcfg.InterfaceIPv4(iface)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("-i %s: %w; give --addr", iface, err)
	}
	return a, nil
}
