// Command l2lb is a userspace layer-2 direct-server-return load balancer: a replacement for Linux
// IPVS in direct-routing mode and for the helper CommuniGate Pro uses to drive it.
//
// This file only wires packages together; the work is done in dataplane, conntrack, scheduler,
// vipset and hostcfg.
package main

import (
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"strings"

	"github.com/l2lb/l2lb/control"
)

const usage = `l2lb — userspace layer-2 direct-server-return load balancer

Usage:
  l2lb run    [flags]            run the active balancer with static members
  l2lb helper [-p N] [-i IF] [-s N] [-t N] [-f FILE] [-r N] [-m] [--trace FILE]
                                 CommuniGate Pro's External Load Balancer helper (stdin/stdout)
  l2lb status [--json]           status of the running balancer (like ipvsadm -Ln --stats)
  l2lb conns  [--vip V] [--member M]  its connection table (like ipvsadm -Lnc)
  l2lb weight MEMBER N           set a member's weight (0 = quiescent)
  l2lb drain  MEMBER [--wait]    quiesce a member; --wait until its flows and templates are gone
  l2lb reload                    re-read the VIP file (same as SIGHUP)
  l2lb vip    up|down|list [-f FILE]  put the VIPs of FILE on lo, remove them, or list them
  l2lb doctor [-i IF] [-f FILE] [--fix]  check the host settings a balancer node needs
  l2lb demo   [flags]            build a namespace testbed and run the balancer on it (root)
  l2lb bench  [scenario...] [--json FILE] [--runs N] [--duration D]  benchmark on a namespace testbed (root)
  l2lb version

Run "l2lb COMMAND -h" for the flags of a command.
`

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func realMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "helper":
		return cmdHelper(rest, os.Stdin, stdout, stderr)
	case "run":
		return cmdRun(rest, stdout, stderr)
	case "status", "conns", "weight", "drain", "reload":
		return control.RunVerb(cmd, rest, stdout, stderr)
	case "vip":
		return cmdVIP(rest, stdout, stderr)
	case "doctor":
		return cmdDoctor(rest, stdout, stderr)
	case "demo":
		return cmdDemo(rest, stdout, stderr)
	case "bench":
		return cmdBench(rest, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "l2lb", version)
		return 0
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "l2lb: unknown command %q\n\n%s", cmd, usage)
	return 2
}

// synopses give each subcommand's usage line and one-sentence description for its -h output.
var synopses = map[string][2]string{
	"run":    {"[flags]", "Run the active balancer: static members with --member, or a standalone cluster with --peers."},
	"helper": {"[-p N] [-i IF] [-s N] [-t N] [-f FILE] [-r N] [-m] [--trace FILE]", "CommuniGate Pro's External Load Balancer helper: commands on stdin, answers on stdout."},
	"vip":    {"up|down|list [-f FILE] [-n]", "Put the VIPs of FILE on lo (IPv4 as /32, IPv6 as /128), remove them, or list them (replaces ifup-lo/ifdown-lo)."},
	"doctor": {"[-i IF] [-f FILE] [--peer-range LO-HI] [--fix]", "Check the host settings a balancer node needs and print exactly what to change."},
	"demo":   {"[--conns N] [-p N] [-r N] [--keep]", "Build a namespace testbed, run the balancer on it and send real traffic through the VIP (root)."},
}

func init() { maps.Copy(synopses, control.Synopses) }

// newFlagSet returns a flag set whose -h output starts with the command's usage line and
// description and lists every flag with its default.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		s := synopses[strings.Fields(name)[0]]
		fmt.Fprintf(stderr, "usage: l2lb %s %s\n\n%s\n\nflags:\n", name, s[0], s[1])
		fs.PrintDefaults()
	}
	return fs
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"
