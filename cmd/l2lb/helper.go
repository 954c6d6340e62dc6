package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/l2lb/l2lb/cgphelper"
	"github.com/l2lb/l2lb/connsync"
	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/helperproto"
	"github.com/l2lb/l2lb/provider"
	"github.com/l2lb/l2lb/scheduler"
)

// cmdHelper runs l2lb as CommuniGate Pro's External Load Balancer helper, a drop-in for the
// seed's IPVSHelper.sh: same options, same defaults, commands on stdin, answers on stdout.
func cmdHelper(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	// CGP's Program Path carries the options in the same string ("$Services/l2lb helper -p 30
	// -i eth1"); if they arrive as one argument, split them.
	if len(args) == 1 && strings.ContainsAny(args[0], " \t") {
		args = strings.Fields(args[0])
	}
	fs := newFlagSet("helper", stderr)
	p := fs.Int("p", 15, "persistence seconds: a client's packets within this time go to the same frontend (0 = off)")
	iface := fs.String("i", "eth0", "interface that receives VIP traffic")
	syncID := fs.Int("s", 0, "SyncID of the load balancer group (0-65535; selects the virtual MAC)")
	timeout := fs.Int("t", 15, "seconds: bound on every wait for CGP's commands; drives periodic work")
	file := fs.String("f", "/etc/sysconfig/vipaddrs", "VIP list file")
	weight := fs.Int("r", 100, "weight of this server while it is the active balancer (every other member weighs 100)")
	dry := fs.Bool("m", false, "perform no host change and no forwarding; write every action as a '* ' line for CGP's log")
	trace := fs.String("trace", "", "append every line received and sent, timestamped, to this file")
	sched := fs.String("scheduler", "maglev", "scheduler: maglev, wrr or wlc")
	vmacS := fs.String("vmac", "", "virtual MAC (default 02:6c:32:62:SS:SS from -s)")
	syncKey := fs.String("sync-key-file", "", "file holding the shared key that authenticates connection-sync messages")
	syncGroup := fs.String("sync-group", "", "connection-sync multicast group `ADDR:PORT` (default "+connsync.DefaultGroup.String()+")")
	noSync := fs.Bool("no-sync", false, "do not replicate the connection table between group members")
	gossipPort := fs.Int("gossip-port", 7946, "memberlist port used to learn the members' source-port ranges (seed step 7); 0 = off")
	var ops opsFlags
	ops.register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "l2lb helper: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *p < 0 || *weight < 0 || *timeout <= 0 || *syncID < 0 || *syncID > 0xffff {
		fmt.Fprintln(stderr, "l2lb helper: -p and -r must be >= 0, -t > 0, -s 0..65535")
		return 2
	}
	kind, err := scheduler.ParseKind(*sched)
	if err != nil {
		fmt.Fprintln(stderr, "l2lb helper:", err)
		return 2
	}
	vmac := defaultVMAC(*syncID)
	if *vmacS != "" {
		if vmac, err = net.ParseMAC(*vmacS); err != nil || len(vmac) != 6 {
			fmt.Fprintf(stderr, "l2lb helper: --vmac %q: not a MAC-48 address\n", *vmacS)
			return 2
		}
	}
	var sc connsync.Config
	if *syncKey != "" {
		if sc.Key, err = readKey(*syncKey); err != nil {
			fmt.Fprintln(stderr, "l2lb helper:", err)
			return 1
		}
	}
	if *syncGroup != "" {
		if sc.Group, err = netip.ParseAddrPort(*syncGroup); err != nil {
			fmt.Fprintln(stderr, "l2lb helper: --sync-group:", err)
			return 2
		}
	}
	var traceW io.Writer
	log := slog.New(slog.DiscardHandler) // nothing may go to stderr while CGP runs us
	if *trace != "" {
		f, err := os.OpenFile(*trace, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			fmt.Fprintln(stderr, "l2lb helper: --trace:", err)
			return 1
		}
		defer f.Close()
		traceW = f
		log = slog.New(slog.NewTextHandler(f, nil))
	}
	var sess *helperproto.Session
	h := cgphelper.New(cgphelper.Options{
		Persistence: time.Duration(*p) * time.Second, Interface: *iface, SyncID: *syncID, VIPFile: *file,
		SelfWeight: uint32(*weight), DryRun: *dry, Scheduler: kind, VirtualMAC: vmac,
		Sync: sc, NoSync: *noSync, GossipPort: uint16(*gossipPort),
	}, cgphelper.SystemHost{}, func(format string, a ...any) { sess.Info(format, a...) }, log)
	sess = helperproto.NewSession(helperproto.Config{In: stdin, Out: stdout, Handler: h,
		Timeout: time.Duration(*timeout) * time.Second, Trace: traceW, MaxIntf: helperproto.IntfVersion})
	if err := h.Start(); err != nil {
		sess.Info("cannot start the fast path: %v", err)
	}
	if eng, node := h.Engine(); eng != nil {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		startOps(ctx, ops, provider.New(&provider.Source{Mode: control.ModeHelper, Interface: *iface, Engine: eng, Node: node,
			Role: func() provider.Role {
				a, since, tr := h.RoleInfo()
				return provider.Role{Active: a, Since: since, Transitions: tr}
			},
			Sync: func() (connsync.Stats, []string, bool) {
				s, ok := h.SyncStats()
				return s, syncPeers(sc), ok
			},
			SetWeight: h.SetWeight,
			SyncLast:  h.SyncLast,
			Reload:    h.ReloadVIPs,
		}), func(f string, a ...any) { sess.Info(f, a...) })
	}
	if err := sess.Run(); err != nil {
		fmt.Fprintln(stderr, "l2lb helper:", err) // after the session: CGP reads stderr at exit
		return 1
	}
	return 0
}
