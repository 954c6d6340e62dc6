package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/l2lb/l2lb/cluster"
	"github.com/l2lb/l2lb/connsync"
	"github.com/l2lb/l2lb/conntrack"
	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/dataplane"
	"github.com/l2lb/l2lb/hostcfg"
	"github.com/l2lb/l2lb/provider"
	"github.com/l2lb/l2lb/scheduler"
	"github.com/l2lb/l2lb/vipset"
)

// runCluster runs `l2lb run --peers ...`: a standalone node with its own membership, election and
// connection sync.
func runCluster(o runOptions, log *slog.Logger, vips *vipset.Set, vmac net.HardwareAddr, kind scheduler.Kind,
	nodest dataplane.NoDestPolicy, to conntrack.Timeouts) error {
	addr, err := nodeAddr(o.addr, o.iface)
	if err != nil {
		return err
	}
	if o.priority < 0 || o.priority > 255 {
		return fmt.Errorf("--priority %d: want 0-255", o.priority)
	}
	cfg := cluster.Config{Name: o.name, Interface: o.iface, Addr: addr, VIPs: vips, VirtualMAC: vmac,
		Persistence: time.Duration(o.persistence) * time.Second, Weight: 100, SelfWeight: uint32(o.selfWeight),
		Priority: uint8(o.priority), Preempt: o.preempt, Scheduler: kind, Workers: o.workers, NoDest: nodest,
		Conntrack: conntrack.Config{MaxEntries: o.maxConns, Timeouts: to}, Log: log}
	for _, p := range o.peers {
		for _, one := range strings.Split(p, ",") {
			if one = strings.TrimSpace(one); one != "" {
				cfg.Peers = append(cfg.Peers, one)
			}
		}
	}
	if o.bind != "" {
		if cfg.Bind, err = netip.ParseAddrPort(o.bind); err != nil {
			return fmt.Errorf("--bind %q: %w", o.bind, err)
		}
	}
	for _, p := range o.healthPorts {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return fmt.Errorf("--health-port %q: not a port", p)
		}
		cfg.HealthPorts = append(cfg.HealthPorts, uint16(n))
	}
	cfg.Sync.SyncID = uint16(o.syncID)
	if o.syncGroup != "" {
		if cfg.Sync.Group, err = netip.ParseAddrPort(o.syncGroup); err != nil {
			return fmt.Errorf("--sync-group %q: %w", o.syncGroup, err)
		}
	}
	for _, p := range o.syncPeers {
		ap, err := netip.ParseAddrPort(p)
		if err != nil {
			return fmt.Errorf("--sync-peer %q: %w", p, err)
		}
		cfg.Sync.Peers = append(cfg.Sync.Peers, ap)
	}
	if o.syncKeyFile != "" {
		if cfg.Sync.Key, err = readKey(o.syncKeyFile); err != nil {
			return err
		}
	}
	if o.gossipKey != "" {
		if cfg.ClusterKey, err = readKey(o.gossipKey); err != nil {
			return err
		}
	}
	ready := make(chan struct{})
	cfg.OnReady = func() { close(ready) }
	node, err := cluster.New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	errc := make(chan error, 1)
	go func() { errc <- node.Run(ctx) }()
	startOps(ctx, o.ops, provider.New(&provider.Source{Mode: control.ModeCluster, NodeName: node.Status().Name,
		Interface: o.iface, Engine: node.Engine(), Node: node.Dataplane(), Limit: o.maxConns,
		Role: func() provider.Role {
			a, since, tr := node.RoleInfo()
			return provider.Role{Active: a, Since: since, Transitions: tr}
		},
		Sync: func() (connsync.Stats, []string, bool) {
			s, ok := node.SyncStats()
			return s, syncPeers(cfg.Sync), ok
		},
		SetWeight: node.SetWeight,
		SyncLast:  node.SyncLast,
		Reload:    func() error { return reloadVIPs(o.vipFile, node.Engine(), node.Dataplane(), log) },
	}), slogWarn(log))
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ready:
			ready = nil
			log.Info("ready", "mode", "cluster", "name", node.Status().Name, "addr", addr, "interface", o.iface,
				"vips", vips.String(), "vmac", vmac.String(), "peers", strings.Join(cfg.Peers, ","))
			writeStats(o.statsFile, node.Dataplane(), node.Engine(), log)
		case <-tick.C:
			writeStats(o.statsFile, node.Dataplane(), node.Engine(), log)
		case <-hup:
			// Without --spread every VIP has one owner, so the election needs no change: the
			// active node serves whatever the engine's VIP set is.
			reloadVIPs(o.vipFile, node.Engine(), node.Dataplane(), log)
		case err := <-errc:
			writeStats(o.statsFile, node.Dataplane(), node.Engine(), log)
			if err == nil {
				log.Info("stopped")
			}
			return err
		}
	}
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

// readKey reads a key file; surrounding whitespace is ignored.
func readKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k := []byte(strings.TrimSpace(string(b)))
	if len(k) == 0 {
		return nil, fmt.Errorf("%s: empty key", path)
	}
	return k, nil
}

// syncPeers names where sync messages go: the unicast peers, or the multicast group.
func syncPeers(c connsync.Config) []string {
	if len(c.Peers) == 0 {
		g := c.Group
		if !g.IsValid() {
			g = connsync.DefaultGroup
		}
		return []string{g.String() + " (multicast)"}
	}
	out := make([]string, 0, len(c.Peers))
	for _, p := range c.Peers {
		out = append(out, p.String())
	}
	return out
}
