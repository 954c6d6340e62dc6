package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/l2lb/l2lb/afpacket"
	"github.com/l2lb/l2lb/balancer"
	"github.com/l2lb/l2lb/cluster"
	"github.com/l2lb/l2lb/connsync"
	"github.com/l2lb/l2lb/conntrack"
	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/dataplane"
	"github.com/l2lb/l2lb/hostcfg"
	"github.com/l2lb/l2lb/scheduler"
	"github.com/l2lb/l2lb/static"
)

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// balancerFlags are the flags of the balancer itself, the same for `l2lb run` and `l2lb helper`
// (the seed's -p -i -s -f -r and l2lb's fast-path settings).
type balancerFlags struct {
	iface       string
	vipFile     string
	persistence int
	syncID      int
	selfWeight  int
	vmac        string
	sched       string
	workers     int
	busyPoll    time.Duration
	maxConns    int
	nodest      string
	tcpTimeout  time.Duration
	finTimeout  time.Duration
	udpTimeout  time.Duration
	statsFile   string
	syncGroup   string
	syncKeyFile string
	ops         opsFlags
}

func (f *balancerFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.iface, "i", "eth0", "interface that receives VIP traffic")
	fs.StringVar(&f.vipFile, "f", "/etc/sysconfig/vipaddrs", "VIP list file (seed format: addresses and /24../32 subnets)")
	fs.IntVar(&f.persistence, "p", 15, "persistence seconds: a client's new connections within this time go to the same frontend (0 = off)")
	fs.IntVar(&f.syncID, "s", 0, "SyncID of the balancer group (0-65535; selects the default virtual MAC and the sync group)")
	fs.IntVar(&f.selfWeight, "r", 100, "weight of this node as a frontend while it is the active balancer (others weigh 100)")
	fs.StringVar(&f.vmac, "vmac", "", "virtual MAC answered for the VIPs (default 02:6c:32:62:SS:SS from -s)")
	fs.StringVar(&f.sched, "scheduler", "maglev", "scheduler: maglev (consistent hash), wrr or wlc")
	fs.IntVar(&f.workers, "workers", 1, "fast-path workers (sockets in one PACKET_FANOUT group)")
	fs.DurationVar(&f.busyPoll, "busy-poll", afpacket.DefaultRing().BusyPoll, "how long a worker polls its ring for the next frame before sleeping (0: sleep at once; trades CPU for latency)")
	fs.IntVar(&f.maxConns, "max-conns", 1<<20, "connection table limit; beyond it flows are forwarded by hash alone")
	fs.StringVar(&f.nodest, "nodest", "reschedule", "flows of a removed frontend: reschedule or expire")
	fs.DurationVar(&f.tcpTimeout, "tcp-timeout", 900*time.Second, "timeout of established TCP flows (IPVS default)")
	fs.DurationVar(&f.finTimeout, "tcpfin-timeout", 120*time.Second, "timeout of closing TCP flows (IPVS default)")
	fs.DurationVar(&f.udpTimeout, "udp-timeout", 300*time.Second, "timeout of UDP flows (IPVS default)")
	fs.StringVar(&f.statsFile, "stats-file", "", "write the status as JSON (the schema of l2lb status --json) to this file every second and at exit")
	fs.StringVar(&f.syncGroup, "sync-group", "", "connection-sync multicast group `ADDR:PORT` (default "+connsync.DefaultGroup.String()+")")
	fs.StringVar(&f.syncKeyFile, "sync-key-file", "", "file holding the shared key that authenticates connection-sync messages (HMAC-SHA256); without it sync is unauthenticated")
	f.ops.register(fs)
}

// config turns the flags into a balancer configuration; sync is filled in by the caller.
func (f *balancerFlags) config(mode, name string, log *slog.Logger) (balancer.Config, error) {
	var zero balancer.Config
	if f.persistence < 0 || f.selfWeight < 0 || f.syncID < 0 || f.syncID > 0xffff {
		return zero, errors.New("-p and -r must not be negative, -s must be 0..65535")
	}
	kind, err := scheduler.ParseKind(f.sched)
	if err != nil {
		return zero, err
	}
	nodest, err := dataplane.ParseNoDestPolicy(f.nodest)
	if err != nil {
		return zero, err
	}
	vmac := defaultVMAC(f.syncID)
	if f.vmac != "" {
		if vmac, err = net.ParseMAC(f.vmac); err != nil || len(vmac) != 6 {
			return zero, fmt.Errorf("--vmac %q: not a MAC-48 address", f.vmac)
		}
	}
	to := conntrack.DefaultTimeouts()
	to.TCPEstablished, to.TCPClosing, to.UDP = f.tcpTimeout, f.finTimeout, f.udpTimeout
	busy := f.busyPoll
	if busy <= 0 {
		busy = -1 // the flag's 0 means off; node.OpenConfig's 0 means the default
	}
	return balancer.Config{Mode: mode, Name: name, Interface: f.iface, VIPFile: f.vipFile, VirtualMAC: vmac,
		Scheduler: kind, Persistence: time.Duration(f.persistence) * time.Second, NoDest: nodest,
		MaxConns: f.maxConns, Timeouts: to, Workers: f.workers, BusyPoll: busy, StatsFile: f.statsFile, Log: log}, nil
}

// syncConfig returns the connection-sync settings of the flags.
func (f *balancerFlags) syncConfig() (*connsync.Config, error) {
	sc := &connsync.Config{SyncID: uint16(f.syncID)}
	var err error
	if f.syncGroup != "" {
		if sc.Group, err = netip.ParseAddrPort(f.syncGroup); err != nil {
			return nil, fmt.Errorf("--sync-group %q: %w", f.syncGroup, err)
		}
	}
	if f.syncKeyFile != "" {
		if sc.Key, err = readKey(f.syncKeyFile); err != nil {
			return nil, err
		}
	}
	return sc, nil
}

// runOptions are the flags of `l2lb run`.
type runOptions struct {
	balancerFlags
	members    listFlag
	portRanges listFlag
	logLevel   string
	cpuProfile string
	// Standalone cluster (--peers).
	peers       listFlag
	name        string
	addr        string
	bind        string
	priority    int
	preempt     bool
	healthPorts listFlag
	syncPeers   listFlag
	gossipKey   string
}

func runFlags(o *runOptions, stderr io.Writer) *flag.FlagSet {
	fs := newFlagSet("run", stderr)
	o.balancerFlags.register(fs)
	fs.Var(&o.members, "member", "frontend real address `ADDR[=WEIGHT]` (repeatable); this node's own address makes it a frontend too, with weight -r")
	fs.Var(&o.portRanges, "port-range", "a frontend's source-port range for its outgoing connections, `ADDR=LO-HI` (repeatable; seed step 7)")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a pprof CPU profile of the run to `FILE` (written at exit)")
	fs.Var(&o.peers, "peers", "standalone cluster: other nodes' membership addresses `HOST[:PORT]` (comma-separated or repeated); members and the active node then come from the cluster instead of --member")
	fs.StringVar(&o.name, "name", "", "cluster: this node's unique name (default: its address)")
	fs.StringVar(&o.addr, "addr", "", "cluster: this node's real IPv4 address (default: the first IPv4 address of -i)")
	fs.StringVar(&o.bind, "bind", "", "cluster: membership listen address `ADDR:PORT` (default ADDR:7946, TCP and UDP)")
	fs.IntVar(&o.priority, "priority", 100, "cluster: election priority 0-255; the highest alive and healthy node is active (ties: name)")
	fs.BoolVar(&o.preempt, "preempt", false, "cluster: a returning higher-priority node takes the active role back once its table is synced")
	fs.Var(&o.healthPorts, "health-port", "cluster: this node's own service port to probe with TCP connects (repeatable); an unhealthy node gets no new flows")
	fs.Var(&o.syncPeers, "sync-peer", "cluster: send sync messages to this unicast `ADDR:PORT` instead of multicast (repeatable)")
	fs.StringVar(&o.gossipKey, "gossip-key-file", "", "cluster: file holding a 16, 24 or 32-byte key that encrypts membership gossip")
	return fs
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
		if err == nil {
			defer f.Close()
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			log.Error("l2lb run failed", "err", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	if err := run(o, log); err != nil {
		log.Error("l2lb run failed", "err", err)
		return 1
	}
	log.Info("stopped")
	return 0
}

// run builds the balancer and its control plane: static members, or with --peers the
// standalone cluster.
func run(o runOptions, log *slog.Logger) error {
	if len(o.peers) > 0 && len(o.members) > 0 {
		return errors.New("--member and --peers exclude each other: with --peers the members come from the cluster")
	}
	if len(o.peers) == 0 && len(o.members) == 0 {
		return errors.New("no --member given (or --peers for a standalone cluster)")
	}
	mode := control.ModeRun
	if len(o.peers) > 0 {
		mode = control.ModeCluster
	}
	cfg, err := o.config(mode, o.name, log)
	if err != nil {
		return err
	}
	if len(o.peers) == 0 {
		if cfg.Name == "" {
			cfg.Name, _ = os.Hostname()
		}
		b, err := balancer.New(cfg)
		if err != nil {
			return err
		}
		ms, err := static.ParseMembers(o.members, o.portRanges, uint32(o.selfWeight), hostcfg.LocalIPv4s(), b.VIPs())
		if err != nil {
			return err
		}
		return serve(b, static.New(b, ms), o.ops, log.Warn)
	}
	addr, err := nodeAddr(o.addr, o.iface)
	if err != nil {
		return err
	}
	if o.priority < 0 || o.priority > 255 {
		return fmt.Errorf("--priority %d: want 0-255", o.priority)
	}
	if cfg.Name == "" {
		cfg.Name = addr.String()
	}
	if cfg.Sync, err = o.syncConfig(); err != nil {
		return err
	}
	cfg.Sync.Local = addr
	for _, p := range o.syncPeers {
		ap, err := netip.ParseAddrPort(p)
		if err != nil {
			return fmt.Errorf("--sync-peer %q: %w", p, err)
		}
		cfg.Sync.Peers = append(cfg.Sync.Peers, ap)
	}
	cfg.KeepLeaving = true
	b, err := balancer.New(cfg)
	if err != nil {
		return err
	}
	cc := cluster.Config{Name: cfg.Name, Addr: addr, Weight: 100, SelfWeight: uint32(o.selfWeight),
		Priority: uint8(o.priority), Preempt: o.preempt, Log: log}
	if ifi, err := net.InterfaceByName(o.iface); err == nil {
		cc.MAC = ifi.HardwareAddr
	}
	cc.VIPs = b.VIPs().Addrs()
	for _, p := range o.peers {
		for _, one := range strings.Split(p, ",") {
			if one = strings.TrimSpace(one); one != "" {
				cc.Peers = append(cc.Peers, one)
			}
		}
	}
	if o.bind != "" {
		if cc.Bind, err = netip.ParseAddrPort(o.bind); err != nil {
			return fmt.Errorf("--bind %q: %w", o.bind, err)
		}
	}
	for _, p := range o.healthPorts {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return fmt.Errorf("--health-port %q: not a port", p)
		}
		cc.HealthPorts = append(cc.HealthPorts, uint16(n))
	}
	if o.gossipKey != "" {
		if cc.ClusterKey, err = readKey(o.gossipKey); err != nil {
			return err
		}
	}
	plane, err := cluster.New(b, cc)
	if err != nil {
		return err
	}
	return serve(b, plane, o.ops, log.Warn)
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
