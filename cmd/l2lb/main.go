// Command l2lb is a userspace layer-2 direct-server-return load balancer: a replacement for Linux
// IPVS in direct-routing mode and for the helper CommuniGate Pro uses to drive it.
//
// This file only wires packages together; the work is done in dataplane, conntrack, scheduler,
// vipset and hostcfg.
package main

import (
	"fmt"
	"io"
	"os"
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
	case "status":
		return cmdStatus(rest, stdout, stderr)
	case "conns":
		return cmdConns(rest, stdout, stderr)
	case "weight":
		return cmdWeight(rest, stdout, stderr)
	case "drain":
		return cmdDrain(rest, stdout, stderr)
	case "reload":
		return cmdReload(rest, stdout, stderr)
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

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"
