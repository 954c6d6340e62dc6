package control

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"time"
)

// Synopses give each client verb's usage line and one-sentence description, for its -h output
// and the l2lb usage text.
var Synopses = map[string][2]string{
	"status": {"[--json] [--control PATH]", "Show the running balancer's status, like ipvsadm -Ln --stats."},
	"conns":  {"[--vip V] [--member M] [--control PATH]", "Show the running balancer's connection table, like ipvsadm -Lnc."},
	"weight": {"[--control PATH] MEMBER WEIGHT", "Set a member's weight; 0 quiesces it (no new flows, existing ones continue)."},
	"drain":  {"[--wait] [--timeout D] [--control PATH] MEMBER", "Quiesce a member; with --wait, return once its flows and persistence templates have ended."},
	"reload": {"[--control PATH]", "Re-read the VIP file of the running balancer (the same as SIGHUP)."},
}

// RunVerb runs the client verb `l2lb NAME ARGS...` (one of Synopses) against a running balancer's
// control socket and returns the process exit code: 0 done, 1 failed, 2 bad usage.
func RunVerb(name string, args []string, stdout, stderr io.Writer) int {
	switch name {
	case "status":
		return verbStatus(args, stdout, stderr)
	case "conns":
		return verbConns(args, stdout, stderr)
	case "weight":
		return verbWeight(args, stdout, stderr)
	case "drain":
		return verbDrain(args, stdout, stderr)
	case "reload":
		return verbReload(args, stdout, stderr)
	}
	fmt.Fprintf(stderr, "l2lb: unknown command %q\n", name)
	return 2
}

// clientFlags returns the flag set of a verb, whose -h output starts with its usage line and
// description, with the --control flag every verb has.
func clientFlags(name string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		s := Synopses[name]
		fmt.Fprintf(stderr, "usage: l2lb %s %s\n\n%s\n\nflags:\n", name, s[0], s[1])
		fs.PrintDefaults()
	}
	path := fs.String("control", DefaultSocket, "control socket of the running l2lb")
	return fs, path
}

func parseOrHelp(fs *flag.FlagSet, args []string) (int, bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	return 0, true
}

// verbStatus prints the running balancer's status, like ipvsadm -Ln --stats.
func verbStatus(args []string, stdout, stderr io.Writer) int {
	fs, path := clientFlags("status", stderr)
	asJSON := fs.Bool("json", false, "print the status as JSON")
	if rc, ok := parseOrHelp(fs, args); !ok {
		return rc
	}
	st, err := Dial(*path).Status()
	if err != nil {
		fmt.Fprintln(stderr, "l2lb status:", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(st); err != nil {
			return 1
		}
		return 0
	}
	if err := WriteStatus(stdout, st); err != nil {
		return 1
	}
	return 0
}

// verbConns prints the connection table, like ipvsadm -Lnc.
func verbConns(args []string, stdout, stderr io.Writer) int {
	fs, path := clientFlags("conns", stderr)
	vipS := fs.String("vip", "", "only connections to this VIP")
	memberS := fs.String("member", "", "only connections to this member")
	if rc, ok := parseOrHelp(fs, args); !ok {
		return rc
	}
	var vip, member netip.Addr
	var err error
	if *vipS != "" {
		if vip, err = netip.ParseAddr(*vipS); err != nil {
			fmt.Fprintln(stderr, "l2lb conns: --vip:", err)
			return 2
		}
	}
	if *memberS != "" {
		if member, err = netip.ParseAddr(*memberS); err != nil {
			fmt.Fprintln(stderr, "l2lb conns: --member:", err)
			return 2
		}
	}
	cs, err := Dial(*path).Conns(vip, member)
	if err != nil {
		fmt.Fprintln(stderr, "l2lb conns:", err)
		return 1
	}
	if err := WriteConns(stdout, cs); err != nil {
		return 1
	}
	return 0
}

// verbWeight sets a member's weight (0 quiesces it).
func verbWeight(args []string, stdout, stderr io.Writer) int {
	fs, path := clientFlags("weight", stderr)
	if rc, ok := parseOrHelp(fs, args); !ok {
		return rc
	}
	if fs.NArg() != 2 {
		fs.Usage()
		return 2
	}
	member, err := netip.ParseAddr(fs.Arg(0))
	w, err2 := strconv.ParseUint(fs.Arg(1), 10, 32)
	if err != nil || err2 != nil {
		fmt.Fprintln(stderr, "l2lb weight: want MEMBER (IP address) and WEIGHT (0..4294967295)")
		return 2
	}
	if err := Dial(*path).SetWeight(member, uint32(w)); err != nil {
		fmt.Fprintln(stderr, "l2lb weight:", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s weight %d\n", member, w)
	return 0
}

// verbDrain quiesces a member and optionally waits until its flows and templates have ended.
func verbDrain(args []string, stdout, stderr io.Writer) int {
	fs, path := clientFlags("drain", stderr)
	wait := fs.Bool("wait", false, "wait until the member's flows and persistence templates have ended")
	timeout := fs.Duration("timeout", 15*time.Minute, "give up waiting after this long")
	if rc, ok := parseOrHelp(fs, args); !ok {
		return rc
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	member, err := netip.ParseAddr(fs.Arg(0))
	if err != nil {
		fmt.Fprintln(stderr, "l2lb drain: MEMBER:", err)
		return 2
	}
	last := time.Time{}
	err = Dial(*path).Drain(member, *wait, *timeout, func(flows, templates int64) {
		if time.Since(last) >= 5*time.Second {
			last = time.Now()
			fmt.Fprintf(stdout, "%s: %d flows, %d persistence templates left\n", member, flows, templates)
		}
	})
	if err != nil {
		fmt.Fprintln(stderr, "l2lb drain:", err)
		return 1
	}
	if *wait {
		fmt.Fprintf(stdout, "%s drained: no flows and no persistence templates left\n", member)
	} else {
		fmt.Fprintf(stdout, "%s quiesced (weight 0): no new flows\n", member)
	}
	return 0
}

// verbReload asks the running balancer to re-read its VIP file (the same as SIGHUP).
func verbReload(args []string, stdout, stderr io.Writer) int {
	fs, path := clientFlags("reload", stderr)
	if rc, ok := parseOrHelp(fs, args); !ok {
		return rc
	}
	if err := Dial(*path).Reload(); err != nil {
		fmt.Fprintln(stderr, "l2lb reload:", err)
		return 1
	}
	fmt.Fprintln(stdout, "reloaded")
	return 0
}
