package balancer

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/l2lb/l2lb/afpacket"
	"github.com/l2lb/l2lb/afxdp"
	"github.com/l2lb/l2lb/connsync"
	"github.com/l2lb/l2lb/conntrack"
	"github.com/l2lb/l2lb/dataplane"
	"github.com/l2lb/l2lb/dataplane/node"
	"github.com/l2lb/l2lb/hostcfg"
	"github.com/l2lb/l2lb/scheduler"
)

// Flags are the command-line settings of a balancer, the same for `l2lb run` and `l2lb helper`:
// the seed's -p -i -s -f -r with its defaults, and l2lb's fast-path, table and sync settings.
type Flags struct {
	Interface    string
	VIPFile      string
	Persistence  int
	SyncID       int
	SelfWeight   int
	VMAC         string
	Scheduler    string
	Workers      int
	BusyPoll     time.Duration
	Coalesce     time.Duration
	OverloadNice int
	Backend      string
	XDPMode      string
	XDPTCP       string
	XDPFlows     int
	MaxConns     int
	NoDest       string
	TCPTimeout   time.Duration
	FinTimeout   time.Duration
	UDPTimeout   time.Duration
	StatsFile    string
	Services     string
	SyncGroup    string
	SyncKeyFile  string
}

// Register defines the flags on fs.
func (f *Flags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.Interface, "i", "eth0", "interface that receives VIP traffic")
	fs.StringVar(&f.VIPFile, "f", "/etc/sysconfig/vipaddrs", "VIP list file (seed format: addresses and /24../32 subnets)")
	fs.IntVar(&f.Persistence, "p", 15, "persistence seconds: a client's new connections within this time go to the same frontend (0 = off)")
	fs.IntVar(&f.SyncID, "s", 0, "SyncID of the balancer group (0-65535; selects the default virtual MAC and the sync group)")
	fs.IntVar(&f.SelfWeight, "r", 100, "weight of this node as a frontend while it is the active balancer (others weigh 100)")
	fs.StringVar(&f.VMAC, "vmac", "", "virtual MAC answered for the VIPs (default 02:6c:32:62:SS:SS from -s)")
	fs.StringVar(&f.Scheduler, "scheduler", "maglev", "scheduler: maglev (consistent hash), wrr or wlc")
	fs.IntVar(&f.Workers, "workers", 1, "fast-path workers (sockets in one PACKET_FANOUT group)")
	fs.StringVar(&f.Backend, "backend", "afpacket", "fast-path sockets: afpacket (default) or afxdp (an XDP program redirects frames to the virtual MAC into AF_XDP sockets, one per receive queue; TCP per --xdp-tcp; README, Choosing a backend)")
	fs.StringVar(&f.XDPMode, "xdp-mode", "auto", "afxdp: how the XDP program is attached: native (in the driver), generic (on the skb, any interface) or auto (native, else generic; generic on a veth with --xdp-tcp kernel, where native XDP turns the peer's GSO off)")
	fs.StringVar(&f.XDPTCP, "xdp-tcp", "kernel", "afxdp: where TCP goes: kernel (the default: the kernel's GRO merges segments and --workers AF_PACKET rings forward them whole, with GSO) or xsk (every frame on AF_XDP, as UDP; bulk uploads then cross to user space one wire-size segment at a time; refused in generic XDP mode on a veth or with GRO or LRO on, whose super-frames would be dropped)")
	fs.IntVar(&f.XDPFlows, "xdp-flows", 0, "afxdp: size in flows of the XDP program's flow cache, which forwards the datagrams of known UDP flows and the ACK-only segments of known TCP flows, over IPv4, in the kernel (XDP_TX) instead of through user space; 0 (the default) turns it off (README, The XDP flow cache)")
	fs.DurationVar(&f.BusyPoll, "busy-poll", afpacket.DefaultRing().BusyPoll, "how long a worker polls its ring for the next frame before sleeping (0: sleep at once; trades CPU for latency)")
	fs.DurationVar(&f.Coalesce, "coalesce", 0, "AF_PACKET rings: how long a worker woken for fewer than 16 frames waits for more to handle and send in one batch (0 to 1ms; 0, the default: at once). Cuts CPU per frame at medium rates, adds up to this much latency (README, Performance; refused with --xdp-tcp xsk, which has no rings)")
	fs.IntVar(&f.OverloadNice, "overload-nice", -10, "nice value (-20 to -1) a fast-path worker's thread runs at while its receive ring overflows, back to the process's own a second after the last dropped frame; 0: never raised (README, Performance; needs CAP_SYS_NICE, else logged once and left)")
	fs.IntVar(&f.MaxConns, "max-conns", 1<<20, "connection table limit; beyond it flows are forwarded by hash alone")
	fs.StringVar(&f.NoDest, "nodest", "reschedule", "flows of a removed frontend: reschedule or expire")
	fs.DurationVar(&f.TCPTimeout, "tcp-timeout", 900*time.Second, "timeout of established TCP flows (IPVS default)")
	fs.DurationVar(&f.FinTimeout, "tcpfin-timeout", 120*time.Second, "timeout of closing TCP flows (IPVS default)")
	fs.DurationVar(&f.UDPTimeout, "udp-timeout", 300*time.Second, "timeout of UDP flows (IPVS default)")
	fs.StringVar(&f.Services, "services", "", "services `FILE`: per-port idle timeouts, SIP Call-ID affinity and health checks (docs/services.md); re-read on reload")
	fs.StringVar(&f.StatsFile, "stats-file", "", "write the status as JSON (the schema of l2lb status --json) to this file every second and at exit")
	fs.StringVar(&f.SyncGroup, "sync-group", "", "connection-sync multicast group `ADDR:PORT` (default "+connsync.DefaultGroup.String()+", UDP)")
	fs.StringVar(&f.SyncKeyFile, "sync-key-file", "", "file holding the shared key that authenticates connection-sync messages (HMAC-SHA256); without it sync is unauthenticated")
}

// maxXDPFlows bounds --xdp-flows: an entry of the kernel's LRU hash costs about 100 bytes of
// locked kernel memory with its key, value and bookkeeping, so this is ~1.6 GB.
const maxXDPFlows = 1 << 24

// TestClockRateEnv names the environment variable that sets Config.ClockRate (tests only).
const TestClockRateEnv = "L2LB_TEST_CLOCK_RATE"

// Config turns the flags into a balancer configuration (Sync left unset: SyncConfig).
func (f *Flags) Config(mode, name string, log *slog.Logger) (Config, error) {
	var zero Config
	if f.Persistence < 0 || f.SelfWeight < 0 || f.SyncID < 0 || f.SyncID > 0xffff {
		return zero, errors.New("-p and -r must not be negative, -s must be 0..65535")
	}
	kind, err := scheduler.ParseKind(f.Scheduler)
	if err != nil {
		return zero, err
	}
	nodest, err := dataplane.ParseNoDestPolicy(f.NoDest)
	if err != nil {
		return zero, err
	}
	vmac := DefaultVirtualMAC(uint16(f.SyncID))
	if f.VMAC != "" {
		if vmac, err = net.ParseMAC(f.VMAC); err != nil || len(vmac) != 6 {
			return zero, fmt.Errorf("--vmac %q: not a MAC-48 address", f.VMAC)
		}
	}
	to := conntrack.DefaultTimeouts()
	to.TCPEstablished, to.TCPClosing, to.UDP = f.TCPTimeout, f.FinTimeout, f.UDPTimeout
	busy := f.BusyPoll
	var open func(node.OpenConfig) (node.Sockets, error)
	switch f.Backend {
	case "", "afpacket":
	case "afxdp":
		mode, err := afxdp.ParseMode(f.XDPMode)
		if err != nil {
			return zero, fmt.Errorf("--xdp-mode: %w", err)
		}
		var tcpToKernel bool
		switch f.XDPTCP {
		case "kernel":
			tcpToKernel = true
		case "xsk":
		default:
			return zero, fmt.Errorf("--xdp-tcp %q: want kernel or xsk", f.XDPTCP)
		}
		open = func(c node.OpenConfig) (node.Sockets, error) {
			return node.OpenXDPWith(c, node.XDPConfig{Mode: mode, TCPToKernel: tcpToKernel, FlowCache: f.XDPFlows, Log: log})
		}
	default:
		return zero, fmt.Errorf("--backend %q: want afpacket or afxdp", f.Backend)
	}
	if (f.XDPMode != "auto" || f.XDPTCP != "kernel" || f.XDPFlows != 0) && f.Backend != "afxdp" {
		return zero, errors.New("--xdp-mode, --xdp-tcp and --xdp-flows apply to the afxdp backend only")
	}
	if f.XDPFlows < 0 || f.XDPFlows > maxXDPFlows {
		return zero, fmt.Errorf("--xdp-flows %d: want 0 to %d", f.XDPFlows, maxXDPFlows)
	}
	switch {
	case f.Coalesce < 0 || f.Coalesce > time.Millisecond:
		return zero, fmt.Errorf("--coalesce %v: want 0 to 1ms", f.Coalesce)
	case f.Coalesce > 0 && f.Backend == "afxdp" && f.XDPTCP != "kernel":
		return zero, errors.New("--coalesce applies to AF_PACKET rings: the afpacket backend, or afxdp's with --xdp-tcp kernel")
	}
	var prio node.Prioritizer
	if f.OverloadNice != 0 {
		n := hostcfg.ThreadNice(f.OverloadNice)
		if err := n.Validate(); err != nil {
			return zero, fmt.Errorf("--overload-nice: %w (0: off)", err)
		}
		prio = n
	}
	if busy <= 0 {
		busy = -1 // the flag's 0 means off; node.OpenConfig's 0 means the default
	}
	c := Config{Mode: mode, Name: name, Interface: f.Interface, VIPFile: f.VIPFile, VirtualMAC: vmac,
		Scheduler: kind, Persistence: time.Duration(f.Persistence) * time.Second, NoDest: nodest,
		MaxConns: f.MaxConns, Timeouts: to, Workers: f.Workers, BusyPoll: busy, Coalesce: f.Coalesce, Priority: prio, StatsFile: f.StatsFile, ServicesFile: f.Services, Log: log, Open: open}
	// TestClockRateEnv is read here, not as a flag, so that it never shows in -h: it exists for
	// the end-to-end tests of long idle timeouts (e2e/ops TestIdleIMAPSurvives).
	if v := os.Getenv(TestClockRateEnv); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			return zero, fmt.Errorf("%s=%q: want a whole number >= 1", TestClockRateEnv, v)
		}
		c.ClockRate = n
	}
	return c, nil
}

// SyncConfig returns the connection-sync settings of the flags.
func (f *Flags) SyncConfig() (*connsync.Config, error) {
	sc := &connsync.Config{SyncID: uint16(f.SyncID)}
	var err error
	if f.SyncGroup != "" {
		if sc.Group, err = netip.ParseAddrPort(f.SyncGroup); err != nil {
			return nil, fmt.Errorf("--sync-group %q: %w", f.SyncGroup, err)
		}
	}
	if f.SyncKeyFile != "" {
		if sc.Key, err = ReadKey(f.SyncKeyFile); err != nil {
			return nil, err
		}
	}
	return sc, nil
}

// DefaultVirtualMAC derives the virtual MAC from the SyncID: locally administered (RFC 7042
// §2.1), fixed per group so that every node of a group announces the same MAC and clients' ARP
// caches stay valid across failover, as VRRP's 00:00:5e:00:01:VRID does (RFC 5798 §7.3).
func DefaultVirtualMAC(syncID uint16) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0x6c, 0x32, 0x62, byte(syncID >> 8), byte(syncID)}
}

// ReadKey reads a key file; surrounding whitespace is ignored, an empty key is an error.
func ReadKey(path string) ([]byte, error) {
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
