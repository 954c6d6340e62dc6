package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"
	"strings"

	"github.com/l2lb/l2lb/balancer"
	"github.com/l2lb/l2lb/cluster"
	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/hostcfg"
	"github.com/l2lb/l2lb/static"
)

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// runOptions are the flags of `l2lb run`.
type runOptions struct {
	bal         balancer.Flags
	cl          cluster.Flags
	ops         opsFlags
	members     listFlag
	membersFile string
	portRanges  listFlag
	logLevel    string
	cpuProfile  string
}

func runFlags(o *runOptions, stderr io.Writer) *flag.FlagSet {
	fs := newFlagSet("run", stderr)
	o.bal.Register(fs)
	o.ops.register(fs)
	fs.Var(&o.members, "member", "frontend real address `ADDR[=WEIGHT]` (repeatable); this node's own address makes it a frontend too, with weight -r")
	fs.StringVar(&o.membersFile, "members-file", "", "frontends, one `FILE` line each: ADDR[=WEIGHT] [LO-HI]; re-read on reload (SIGHUP), where removed members leave gracefully")
	fs.Var(&o.portRanges, "port-range", "a frontend's source-port range for its outgoing connections, `ADDR=LO-HI` (repeatable; seed step 7)")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a pprof CPU profile of the run to `FILE` (written at exit)")
	o.cl.Register(fs)
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
	staticMembers := len(o.members) > 0 || o.membersFile != ""
	if o.cl.Enabled() == staticMembers {
		return errors.New("give either --member or --members-file (static members) or --peers (a standalone cluster), not both or neither")
	}
	if o.membersFile != "" && len(o.portRanges) > 0 {
		return errors.New("--port-range does not apply to --members-file: give the range on the member's line")
	}
	if len(o.members) > 0 && o.membersFile != "" {
		return errors.New("give --member or --members-file, not both")
	}
	mode := control.ModeRun
	if o.cl.Enabled() {
		mode = control.ModeCluster
	}
	cfg, err := o.bal.Config(mode, o.cl.Name, log)
	if err != nil {
		return err
	}
	reserveProcs(o.bal)
	if !o.cl.Enabled() {
		if cfg.Name == "" {
			cfg.Name, _ = os.Hostname()
		}
		b, err := balancer.New(cfg)
		if err != nil {
			return err
		}
		load := func() ([]balancer.Member, error) {
			if o.membersFile != "" {
				return static.LoadMembersFile(o.membersFile, uint32(o.bal.SelfWeight), hostcfg.LocalAddrs(), b.VIPs())
			}
			return static.ParseMembers(o.members, o.portRanges, uint32(o.bal.SelfWeight), hostcfg.LocalAddrs(), b.VIPs())
		}
		ms, err := load()
		if err != nil {
			return err
		}
		plane, err := static.New(b, ms)
		if err != nil {
			return err
		}
		if o.membersFile != "" {
			plane.ReloadFrom(b, load)
		}
		return serve(b, plane, o.ops, log.Warn)
	}
	if cfg.Sync, err = o.bal.SyncConfig(); err != nil {
		return err
	}
	cc, err := o.cl.Apply(&cfg, o.bal.SelfWeight, log)
	if err != nil {
		return err
	}
	b, err := balancer.New(cfg)
	if err != nil {
		return err
	}
	cc.VIPs = b.VIPs().Addrs()
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
