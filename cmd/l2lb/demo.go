package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/l2lb/l2lb/internal/demo"
)

// cmdDemo runs the demo scenario (internal/demo) with this binary as the balancer.
func cmdDemo(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("demo", stderr)
	o := demo.Options{}
	fs.IntVar(&o.Conns, "conns", 300, "TCP connections to open through each VIP (IPv4 and IPv6)")
	fs.IntVar(&o.Persistence, "p", 0, "persistence seconds passed to l2lb run")
	fs.IntVar(&o.SelfWeight, "r", 100, "weight of frontend 1 (the active balancer) passed to l2lb run")
	fs.BoolVar(&o.Keep, "keep", false, "keep the testbed and the balancer running until Ctrl-C")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(stderr, "l2lb demo: must run as root (it builds network namespaces); try: sudo l2lb demo")
		return 1
	}
	exe, err := os.Executable()
	if err == nil {
		o.Binary = exe
		err = demo.Run(o, stdout, stderr)
	}
	if err != nil {
		fmt.Fprintln(stderr, "l2lb demo:", err)
		return 1
	}
	return 0
}
