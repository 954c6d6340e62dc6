package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"github.com/l2lb/l2lb/hostcfg"
	"github.com/l2lb/l2lb/vipset"
)

// cmdVIP replaces the seed's ifvip-utils, ifup-lo and ifdown-lo scripts: IPv4
// VIPs go on lo as /32, IPv6 VIPs as /128 with nodad (hostcfg.VIPsUp).
func cmdVIP(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "up" && args[0] != "down" && args[0] != "list") {
		fs := newFlagSet("vip", stderr)
		fs.String("f", "/etc/sysconfig/vipaddrs", "VIP list file")
		fs.Bool("n", false, "dry run: print what would change, change nothing")
		fs.Usage()
		if len(args) == 1 && (args[0] == "-h" || args[0] == "--help") {
			return 0
		}
		return 2
	}
	action := args[0]
	fs := newFlagSet("vip "+action, stderr)
	file := fs.String("f", "/etc/sysconfig/vipaddrs", "VIP list file")
	dry := fs.Bool("n", false, "dry run: print what would change, change nothing")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	vips, err := vipset.ParseFile(*file)
	if err != nil {
		fmt.Fprintln(stderr, "l2lb vip:", err)
		return 1
	}
	var m hostcfg.AddrManager = hostcfg.NetlinkAddrs()
	if *dry {
		m = hostcfg.DryRun(m, func(s string) { fmt.Fprintln(stdout, s) })
	}
	w := addrWidth(vips.Addrs())
	switch action {
	case "list":
		present, missing, err := hostcfg.VIPsList(m, vips.Addrs())
		if err != nil {
			fmt.Fprintln(stderr, "l2lb vip list:", err)
			return 1
		}
		for _, a := range present {
			fmt.Fprintf(stdout, "%-*s on lo\n", w, a)
		}
		for _, a := range missing {
			fmt.Fprintf(stdout, "%-*s MISSING from lo\n", w, a)
		}
		if len(missing) > 0 {
			return 1
		}
		return 0
	case "up", "down":
		f := hostcfg.VIPsUp
		if action == "down" {
			f = hostcfg.VIPsDown
		}
		changes, err := f(m, vips.Addrs())
		for _, c := range changes {
			fmt.Fprintf(stdout, "%-*s %s\n", w, c.Addr, c.Action)
		}
		if err != nil {
			fmt.Fprintln(stderr, "l2lb vip", action+":", err)
			return 1
		}
	}
	return 0
}

// addrWidth is the column width for addresses: 18 as for IPv4 always, wider
// when an IPv6 VIP needs it.
func addrWidth(addrs []netip.Addr) int {
	w := 18
	for _, a := range addrs {
		w = max(w, len(a.String())+1)
	}
	return w
}

// cmdDoctor checks the seed's steps 3 and 7, the design notes' sysctls and,
// when the file lists IPv6 VIPs, what they need (hostcfg.Doctor).
func cmdDoctor(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("doctor", stderr)
	iface := fs.String("i", "eth0", "interface that receives VIP traffic")
	file := fs.String("f", "/etc/sysconfig/vipaddrs", "VIP list file")
	fix := fs.Bool("fix", false, "apply the changes doctor proposes")
	var peers listFlag
	fs.Var(&peers, "peer-range", "another frontend's source-port range `LO-HI` to check for overlap (repeatable)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	in := hostcfg.DoctorInput{Iface: *iface}
	vips, err := vipset.ParseFile(*file)
	if err != nil {
		fmt.Fprintln(stderr, "l2lb doctor:", err)
		return 1
	}
	in.VIPs = vips.Addrs()
	for _, p := range peers {
		lo, hi, ok := strings.Cut(p, "-")
		l, e1 := strconv.ParseUint(lo, 10, 16)
		h, e2 := strconv.ParseUint(hi, 10, 16)
		if !ok || e1 != nil || e2 != nil || l > h {
			fmt.Fprintf(stderr, "l2lb doctor: --peer-range %q: want LO-HI\n", p)
			return 2
		}
		in.OtherPortRanges = append(in.OtherPortRanges, hostcfg.PortRange{Lo: uint16(l), Hi: uint16(h)})
	}
	sys, addrs := hostcfg.ProcSysctl(), hostcfg.NetlinkAddrs()
	findings := hostcfg.Doctor(sys, addrs, in)
	bad := 0
	for _, f := range findings {
		mark := "ok  "
		if !f.OK {
			mark = "FAIL"
			bad++
		}
		fmt.Fprintf(stdout, "%s %-14s have %-12s want %-12s", mark, f.Check, f.Have, f.Want)
		if !f.OK && f.Fix != "" {
			fmt.Fprintf(stdout, "  fix: %s", f.Fix)
		}
		fmt.Fprintln(stdout)
	}
	if bad == 0 {
		fmt.Fprintln(stdout, "all checks passed")
		return 0
	}
	if !*fix {
		fmt.Fprintf(stdout, "%d check(s) failed; run with --fix to apply the changes above\n", bad)
		return 1
	}
	if err := hostcfg.Apply(findings); err != nil {
		fmt.Fprintln(stderr, "l2lb doctor --fix:", err)
		return 1
	}
	again := hostcfg.Doctor(sys, addrs, in)
	for _, f := range again {
		if !f.OK {
			fmt.Fprintf(stdout, "still failing after --fix: %s (have %s, want %s)\n", f.Check, f.Have, f.Want)
			return 1
		}
	}
	fmt.Fprintln(stdout, "fixed; all checks pass now")
	return 0
}
