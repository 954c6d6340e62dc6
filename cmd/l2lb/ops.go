package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"time"

	"github.com/l2lb/l2lb/control"
)

// clientFlags parses the flags common to the client commands.
func clientFlags(name string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := newFlagSet(name, stderr)
	path := fs.String("control", control.DefaultSocket, "control socket of the running l2lb")
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

// cmdStatus prints the running balancer's status, like ipvsadm -Ln --stats.
func cmdStatus(args []string, stdout, stderr io.Writer) int {
	fs, path := clientFlags("status", stderr)
	asJSON := fs.Bool("json", false, "print the status as JSON")
	if rc, ok := parseOrHelp(fs, args); !ok {
		return rc
	}
	st, err := control.Dial(*path).Status()
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
	if err := control.WriteStatus(stdout, st); err != nil {
		return 1
	}
	return 0
}

// cmdConns prints the connection table, like ipvsadm -Lnc.
func cmdConns(args []string, stdout, stderr io.Writer) int {
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
	cs, err := control.Dial(*path).Conns(vip, member)
	if err != nil {
		fmt.Fprintln(stderr, "l2lb conns:", err)
		return 1
	}
	if err := control.WriteConns(stdout, cs); err != nil {
		return 1
	}
	return 0
}

// cmdWeight sets a member's weight (0 quiesces it).
func cmdWeight(args []string, stdout, stderr io.Writer) int {
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
		fmt.Fprintln(stderr, "l2lb weight: want MEMBER (IPv4 address) and WEIGHT (0..4294967295)")
		return 2
	}
	if err := control.Dial(*path).SetWeight(member, uint32(w)); err != nil {
		fmt.Fprintln(stderr, "l2lb weight:", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s weight %d\n", member, w)
	return 0
}

// cmdDrain quiesces a member and optionally waits until its flows and templates have ended.
func cmdDrain(args []string, stdout, stderr io.Writer) int {
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
	err = control.Dial(*path).Drain(member, *wait, *timeout, func(flows, templates int64) {
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

// cmdReload asks the running balancer to re-read its VIP file (the same as SIGHUP).
func cmdReload(args []string, stdout, stderr io.Writer) int {
	fs, path := clientFlags("reload", stderr)
	if rc, ok := parseOrHelp(fs, args); !ok {
		return rc
	}
	if err := control.Dial(*path).Reload(); err != nil {
		fmt.Fprintln(stderr, "l2lb reload:", err)
		return 1
	}
	fmt.Fprintln(stdout, "reloaded")
	return 0
}
