package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/l2lb/l2lb/balancer"
	"github.com/l2lb/l2lb/cgphelper"
	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/helperproto"
)

// cmdHelper runs l2lb as CommuniGate Pro's External Load Balancer helper, a drop-in for the
// seed's IPVSHelper.sh: same options, same defaults, commands on stdin, answers on stdout
// (docs/cgp-helper-protocol.md).
func cmdHelper(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	// CGP's Program Path carries the options in the same string ("$Services/l2lb helper -p 30
	// -i eth1"); if they arrive as one argument, split them.
	if len(args) == 1 && strings.ContainsAny(args[0], " \t") {
		args = strings.Fields(args[0])
	}
	fs := newFlagSet("helper", stderr)
	var bf balancer.Flags
	bf.Register(fs)
	var ops opsFlags
	ops.register(fs)
	timeout := fs.Int("t", 15, "seconds: bound on every wait for CGP's commands; drives periodic work")
	dry := fs.Bool("m", false, "perform no host change and no forwarding; write every action as a '* ' line for CGP's log")
	trace := fs.String("trace", "", "append every line received and sent, timestamped, to this file (and the balancer's log)")
	logLevel := fs.String("log-level", "info", "level of the balancer's log in the --trace file: debug, info, warn, error")
	noSync := fs.Bool("no-sync", false, "do not replicate the connection table between group members")
	gossipPort := fs.Int("gossip-port", 7946, "memberlist port (TCP and UDP) used to learn the members' source-port ranges (seed step 7); 0 = off")
	gossipKey := fs.String("gossip-key-file", "", "file holding a 16, 24 or 32-byte key that encrypts the membership gossip (unencrypted without it)")
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
	if *timeout <= 0 || *gossipPort < 0 || *gossipPort > 0xffff {
		fmt.Fprintln(stderr, "l2lb helper: -t must be > 0, --gossip-port 0..65535")
		return 2
	}
	// Nothing may go to stderr while CGP runs us: the log goes to the trace file or nowhere.
	log := slog.New(slog.DiscardHandler)
	var traceW io.Writer
	if *trace != "" {
		f, err := os.OpenFile(*trace, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			fmt.Fprintln(stderr, "l2lb helper: --trace:", err)
			return 1
		}
		defer f.Close()
		traceW = f
		if log, err = newLogger(*logLevel, f); err != nil {
			fmt.Fprintln(stderr, "l2lb helper:", err)
			return 2
		}
	}
	host, _ := os.Hostname()
	cfg, err := bf.Config(control.ModeHelper, host, log)
	if err != nil {
		fmt.Fprintln(stderr, "l2lb helper:", err)
		return 2
	}
	var sess *helperproto.Session
	info := func(format string, a ...any) { sess.Info(format, a...) }
	var b *balancer.Balancer
	var ctl balancer.Control
	if *dry {
		ctl = cgphelper.NewDryRun(bf.Interface, bf.VIPFile, cfg.VirtualMAC, info)
	} else {
		// A bad VIP file or a missing interface must not stop the helper: CGP gets ERROR for
		// ACTIVE, and `l2lb reload` or the interface's return repairs it.
		cfg.StartAnyway = true
		if !*noSync {
			// The sync channel replaces ipvsadm's sync daemon (--syncid -s).
			if cfg.Sync, err = bf.SyncConfig(); err != nil {
				fmt.Fprintln(stderr, "l2lb helper:", err)
				return 2
			}
		}
		reserveProcs(bf)
		if b, err = balancer.New(cfg); err != nil {
			fmt.Fprintln(stderr, "l2lb helper:", err)
			return 1
		}
		ctl = b
	}
	opt := cgphelper.Options{Interface: bf.Interface, VIPFile: bf.VIPFile, SelfWeight: uint32(bf.SelfWeight),
		GossipPort: uint16(*gossipPort)}
	if *gossipKey != "" {
		if opt.GossipKey, err = balancer.ReadKey(*gossipKey); err != nil {
			fmt.Fprintln(stderr, "l2lb helper:", err)
			return 1
		}
	}
	h := cgphelper.New(ctl, cgphelper.SystemHost{}, opt, info, log)
	sess = helperproto.NewSession(helperproto.Config{In: stdin, Out: stdout, Handler: h,
		Timeout: time.Duration(*timeout) * time.Second, Trace: traceW, MaxIntf: helperproto.IntfVersion})
	plane := h.Plane(sess)
	if b == nil {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		err = plane.Run(ctx)
	} else {
		err = serve(b, plane, ops, func(msg string, a ...any) { sess.Info("%s", attrLine(msg, a)) })
	}
	if err != nil {
		fmt.Fprintln(stderr, "l2lb helper:", err) // after the session: CGP reads stderr at exit
		return 1
	}
	return 0
}

// attrLine formats a message and slog-style key/value pairs on one line.
func attrLine(msg string, kv []any) string {
	var b strings.Builder
	b.WriteString(msg)
	for i := 0; i+1 < len(kv); i += 2 {
		fmt.Fprintf(&b, " %v=%v", kv[i], kv[i+1])
	}
	return b.String()
}
