package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/l2lb/l2lb/afpacket"
	"github.com/l2lb/l2lb/connsync"
	"github.com/l2lb/l2lb/conntrack"
	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/dataplane"
	"github.com/l2lb/l2lb/provider"
	"github.com/l2lb/l2lb/scheduler"
	"github.com/l2lb/l2lb/vipset"
)

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// runOptions are the flags of `l2lb run`.
type runOptions struct {
	iface       string
	vipFile     string
	members     listFlag
	portRanges  listFlag
	persistence int
	selfWeight  int
	statsFile   string
	vmac        string
	syncID      int
	sched       string
	workers     int
	busyPoll    time.Duration
	maxConns    int
	nodest      string
	logLevel    string
	tcpTimeout  time.Duration
	finTimeout  time.Duration
	udpTimeout  time.Duration
	// Standalone cluster mode (issue 4).
	peers       listFlag
	name        string
	addr        string
	bind        string
	priority    int
	preempt     bool
	healthPorts listFlag
	syncGroup   string
	syncPeers   listFlag
	syncKeyFile string
	gossipKey   string
	// cpuProfile is --cpuprofile: a pprof CPU profile of the whole run (used by `l2lb bench`).
	cpuProfile string
	ops        opsFlags
}

func runFlags(o *runOptions, stderr io.Writer) *flag.FlagSet {
	fs := newFlagSet("run", stderr)
	fs.StringVar(&o.iface, "i", "eth0", "interface that receives VIP traffic")
	fs.StringVar(&o.vipFile, "f", "/etc/sysconfig/vipaddrs", "VIP list file (seed format: addresses and /24../32 subnets)")
	fs.Var(&o.members, "member", "frontend real address `ADDR[=WEIGHT]` (repeatable); this node's own address makes it a frontend too, with weight -r")
	fs.Var(&o.portRanges, "port-range", "a frontend's source-port range for its outgoing connections, `ADDR=LO-HI` (repeatable; seed step 7)")
	fs.IntVar(&o.persistence, "p", 15, "persistence seconds: a client's new connections within this time go to the same frontend (0 = off)")
	fs.IntVar(&o.selfWeight, "r", 100, "weight of this node as a frontend while it is the active balancer (others weigh 100)")
	fs.StringVar(&o.statsFile, "stats-file", "", "write a JSON snapshot of the counters to this file every second and at exit")
	fs.StringVar(&o.vmac, "vmac", "", "virtual MAC answered for the VIPs (default 02:6c:32:62:SS:SS from -s)")
	fs.IntVar(&o.syncID, "s", 0, "SyncID of the balancer group (selects the default virtual MAC)")
	fs.StringVar(&o.sched, "scheduler", "maglev", "scheduler: maglev (consistent hash), wrr or wlc")
	fs.IntVar(&o.workers, "workers", 1, "fast-path workers (sockets in one PACKET_FANOUT group)")
	fs.DurationVar(&o.busyPoll, "busy-poll", afpacket.DefaultRing().BusyPoll, "how long a worker polls its ring for the next frame before sleeping (0: sleep at once; trades CPU for latency)")
	fs.IntVar(&o.maxConns, "max-conns", 1<<20, "connection table limit; beyond it flows are forwarded by hash alone")
	fs.StringVar(&o.nodest, "nodest", "reschedule", "flows of a removed frontend: reschedule or expire")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.DurationVar(&o.tcpTimeout, "tcp-timeout", 900*time.Second, "timeout of established TCP flows (IPVS default)")
	fs.DurationVar(&o.finTimeout, "tcpfin-timeout", 120*time.Second, "timeout of closing TCP flows (IPVS default)")
	fs.DurationVar(&o.udpTimeout, "udp-timeout", 300*time.Second, "timeout of UDP flows (IPVS default)")
	o.ops.register(fs)
	fs.Var(&o.peers, "peers", "standalone cluster: other nodes' membership addresses `HOST[:PORT]` (comma-separated or repeated); members and the active node then come from the cluster instead of --member")
	fs.StringVar(&o.name, "name", "", "cluster: this node's unique name (default: its address)")
	fs.StringVar(&o.addr, "addr", "", "cluster: this node's real IPv4 address (default: the first IPv4 address of -i)")
	fs.StringVar(&o.bind, "bind", "", "cluster: membership listen address `ADDR:PORT` (default ADDR:7946)")
	fs.IntVar(&o.priority, "priority", 100, "cluster: election priority 0-255; the highest alive and healthy node is active (ties: name)")
	fs.BoolVar(&o.preempt, "preempt", false, "cluster: a returning higher-priority node takes the active role back once its table is synced")
	fs.Var(&o.healthPorts, "health-port", "cluster: this node's own service port to probe with TCP connects (repeatable); an unhealthy node gets no new flows")
	fs.StringVar(&o.syncGroup, "sync-group", "", "cluster: sync multicast group `ADDR:PORT` (default "+connsync.DefaultGroup.String()+")")
	fs.Var(&o.syncPeers, "sync-peer", "cluster: send sync messages to this unicast `ADDR:PORT` instead of multicast (repeatable)")
	fs.StringVar(&o.syncKeyFile, "sync-key-file", "", "cluster: file holding the shared key that authenticates sync messages (HMAC-SHA256)")
	fs.StringVar(&o.gossipKey, "gossip-key-file", "", "cluster: file holding a 16, 24 or 32-byte key that encrypts membership gossip")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a pprof CPU profile of the run to `FILE` (written at exit)")
	return fs
}

func newLogger(level string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("bad -log-level %q", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// defaultVMAC derives the virtual MAC from the SyncID: locally administered (RFC 7042 §2.1), fixed
// per group so that every node of a group announces the same MAC and clients' ARP caches stay
// valid across failover, as VRRP's 00:00:5e:00:01:VRID does (RFC 5798 §7.3).
func defaultVMAC(syncID int) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0x6c, 0x32, 0x62, byte(syncID >> 8), byte(syncID)}
}

// localAddrs returns the IPv4 addresses configured on this host's interfaces.
func localAddrs() map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return out
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out[ip.Unmap()] = true
			}
		}
	}
	return out
}

// buildMembers turns --member and --port-range flags into members. A member address configured
// on this host is the local member and weighs selfWeight unless a weight is given.
func buildMembers(specs, ranges []string, selfWeight int, local map[netip.Addr]bool, vips *vipset.Set) ([]dataplane.Member, error) {
	var ms []dataplane.Member
	idx := map[netip.Addr]int{}
	for _, s := range specs {
		for _, one := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
			addrS, wS, hasW := strings.Cut(one, "=")
			a, err := netip.ParseAddr(addrS)
			if err != nil || !a.Is4() {
				return nil, fmt.Errorf("--member %q: not an IPv4 address", one)
			}
			if vips.Contains(a) {
				return nil, fmt.Errorf("--member %q: that is a VIP; give the frontend's real address", one)
			}
			m := dataplane.Member{Addr: a, Weight: 100, Local: local[a]}
			if m.Local {
				m.Weight = uint32(selfWeight)
			}
			if hasW {
				w, err := strconv.ParseUint(wS, 10, 32)
				if err != nil {
					return nil, fmt.Errorf("--member %q: bad weight", one)
				}
				m.Weight = uint32(w)
			}
			if _, dup := idx[a]; dup {
				return nil, fmt.Errorf("--member %s given twice", a)
			}
			idx[a] = len(ms)
			ms = append(ms, m)
		}
	}
	for _, r := range ranges {
		addrS, rng, ok := strings.Cut(r, "=")
		a, err := netip.ParseAddr(addrS)
		if !ok || err != nil {
			return nil, fmt.Errorf("--port-range %q: want ADDR=LO-HI", r)
		}
		i, known := idx[a]
		if !known {
			return nil, fmt.Errorf("--port-range %q: %s is not a --member", r, a)
		}
		loS, hiS, ok := strings.Cut(rng, "-")
		lo, err1 := strconv.ParseUint(loS, 10, 16)
		hi, err2 := strconv.ParseUint(hiS, 10, 16)
		if !ok || err1 != nil || err2 != nil || lo == 0 || lo > hi {
			return nil, fmt.Errorf("--port-range %q: want ADDR=LO-HI with 0 < LO <= HI <= 65535", r)
		}
		ms[i].Ports = dataplane.PortRange{Lo: uint16(lo), Hi: uint16(hi)}
	}
	return ms, nil
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	var o runOptions
	fs := runFlags(&o, stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	log, err := newLogger(o.logLevel, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "l2lb run:", err)
		return 2
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			log.Error("l2lb run failed", "err", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Error("l2lb run failed", "err", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	if err := run(o, log); err != nil {
		log.Error("l2lb run failed", "err", err)
		return 1
	}
	return 0
}

func run(o runOptions, log *slog.Logger) error {
	vips, err := vipset.ParseFile(o.vipFile)
	if err != nil {
		return err
	}
	if vips.Len() == 0 {
		return fmt.Errorf("%s: no VIP listed", o.vipFile)
	}
	kind, err := scheduler.ParseKind(o.sched)
	if err != nil {
		return err
	}
	nodest, err := dataplane.ParseNoDestPolicy(o.nodest)
	if err != nil {
		return err
	}
	if o.persistence < 0 || o.selfWeight < 0 {
		return errors.New("-p and -r must not be negative")
	}
	vmac := defaultVMAC(o.syncID)
	if o.vmac != "" {
		if vmac, err = net.ParseMAC(o.vmac); err != nil || len(vmac) != 6 {
			return fmt.Errorf("--vmac %q: not a MAC-48 address", o.vmac)
		}
	}
	to := conntrack.DefaultTimeouts()
	to.TCPEstablished, to.TCPClosing, to.UDP = o.tcpTimeout, o.finTimeout, o.udpTimeout
	if len(o.peers) > 0 {
		if len(o.members) > 0 {
			return errors.New("--member and --peers exclude each other: with --peers the members come from the cluster")
		}
		return runCluster(o, log, vips, vmac, kind, nodest, to)
	}
	members, err := buildMembers(o.members, o.portRanges, o.selfWeight, localAddrs(), vips)
	if err != nil {
		return err
	}
	if len(members) == 0 {
		return errors.New("no --member given (or --peers for a standalone cluster)")
	}
	eng := dataplane.New(conntrack.Config{MaxEntries: o.maxConns, Timeouts: to,
		Persistence: time.Duration(o.persistence) * time.Second})
	ifi, err := net.InterfaceByName(o.iface)
	if err != nil {
		return fmt.Errorf("-i %s: %w", o.iface, err)
	}
	cfg := dataplane.Config{VirtualMAC: vmac, InterfaceMAC: ifi.HardwareAddr, VIPs: vips, Members: members,
		Scheduler: kind, Persistence: time.Duration(o.persistence) * time.Second, NoDest: nodest}
	if err := eng.Configure(cfg); err != nil {
		return err
	}
	ready := make(chan struct{})
	node, err := dataplane.NewNode(dataplane.NodeConfig{Interface: o.iface, Workers: o.workers, BusyPoll: busyPollConfig(o.busyPoll), Engine: eng,
		Logger: log, OnReady: func() { close(ready) }})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	node.SetActive(true)
	errc := make(chan error, 1)
	go func() { errc <- node.Run(ctx) }()
	startOps(ctx, o.ops, provider.New(&provider.Source{Mode: control.ModeRun, NodeName: ifi.Name, Interface: o.iface,
		Engine: eng, Node: node, Limit: o.maxConns,
		Reload: func() error { return reloadVIPs(o.vipFile, eng, node, log) }}), slogWarn(log))
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ready:
			ready = nil
			log.Info("ready", "interface", o.iface, "vips", vips.String(), "vmac", vmac.String(),
				"members", len(members), "persistence", o.persistence, "scheduler", string(kind))
			writeStats(o.statsFile, node, eng, log)
		case <-tick.C:
			writeStats(o.statsFile, node, eng, log)
		case <-hup:
			reloadVIPs(o.vipFile, eng, node, log)
		case err := <-errc:
			writeStats(o.statsFile, node, eng, log)
			if err == nil {
				log.Info("stopped")
			}
			return err
		}
	}
}

// statsSnapshot is the JSON written by --stats-file.
type statsSnapshot struct {
	Time         time.Time         `json:"time"`
	Active       bool              `json:"active"`
	Verdicts     map[string]uint64 `json:"verdicts"`
	Drops        map[string]uint64 `json:"drops"`
	NewFlows     uint64            `json:"new_flows"`
	TableFull    uint64            `json:"table_full"`
	ARPConflicts uint64            `json:"arp_conflicts"`
	ARPAnnounced uint64            `json:"arp_announced"`
	Flows        int               `json:"flows"`
	Templates    int               `json:"templates"`
	Members      []memberSnapshot  `json:"members"`
}

type memberSnapshot struct {
	Addr    string `json:"addr"`
	MAC     string `json:"mac"`
	Weight  uint32 `json:"weight"`
	Local   bool   `json:"local"`
	Ready   bool   `json:"ready"`
	Flows   int64  `json:"flows"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

func writeStats(path string, node *dataplane.Node, eng *dataplane.Engine, log *slog.Logger) {
	if path == "" {
		return
	}
	st := node.Stats()
	flows, tmpl := eng.Table().Len()
	snap := statsSnapshot{Time: time.Now().UTC(), Active: eng.Active(), Verdicts: st.Verdicts, Drops: st.Drops,
		NewFlows: st.NewFlows, TableFull: st.TableFull, ARPConflicts: st.ARPConflicts, ARPAnnounced: st.ARPAnnounced,
		Flows: flows, Templates: tmpl}
	for _, m := range eng.Members() {
		ms := memberSnapshot{Addr: m.Addr.String(), Weight: m.Weight, Local: m.Local, Ready: m.Ready, Flows: m.Flows,
			Packets: st.MemberPackets[m.ID], Bytes: st.MemberBytes[m.ID]}
		if m.MAC != nil {
			ms.MAC = m.MAC.String()
		}
		snap.Members = append(snap.Members, ms)
	}
	b, err := json.MarshalIndent(snap, "", "  ")
	if err != nil {
		return
	}
	// Write then rename so a reader never sees half a file.
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		log.Warn("stats file", "err", err)
		return
	}
	os.Rename(tmp, path)
}

// reloadVIPs re-reads the VIP file (SIGHUP, `l2lb reload`). A bad file is reported with its
// file:line and the running VIPs stay; a good one is applied atomically and the new VIPs are
// announced at once. Established flows are not touched.
func reloadVIPs(path string, eng *dataplane.Engine, node *dataplane.Node, log *slog.Logger) error {
	vips, err := vipset.ParseFile(path)
	if err == nil && vips.Len() == 0 {
		err = fmt.Errorf("%s: no VIP listed", path)
	}
	if err != nil {
		log.Error("reload refused; the running configuration stays", "err", err)
		return err
	}
	old := eng.Config().VIPs
	if old.Equal(vips) {
		log.Info("reload: VIPs unchanged", "vips", vips.String())
		return nil
	}
	if err := eng.SetVIPs(vips); err != nil {
		log.Error("reload refused; the running configuration stays", "err", err)
		return err
	}
	node.Announce()
	log.Info("reloaded", "vips", vips.String(), "was", old.String())
	return nil
}

// busyPollConfig maps the --busy-poll flag, where 0 means off, to NodeConfig.BusyPoll, where 0
// means the default.
func busyPollConfig(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}
