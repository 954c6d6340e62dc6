package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/l2lb/l2lb/bench"
)

// cmdBench runs `l2lb bench [scenario...] [flags]` with this binary as the balancer: it builds its
// own namespace testbed, prints a table of medians and min–max over the runs and optionally writes
// JSON. Everything it creates is removed at the end, also on Ctrl-C.
func cmdBench(args []string, stdout, stderr io.Writer) int {
	o, jsonFile, err := bench.ParseArgs(args, stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, bench.ErrBadOptions):
		fmt.Fprintln(stderr, "l2lb bench:", err)
		return 2
	case err != nil:
		return 2
	}
	if o.Exe, err = os.Executable(); err != nil {
		fmt.Fprintln(stderr, "l2lb bench:", err)
		return 1
	}
	start := time.Now()
	o.Logf = func(f string, a ...any) {
		fmt.Fprintf(stderr, "[%6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(f, a...))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := bench.Run(ctx, o)
	switch {
	case errors.Is(err, context.Canceled):
		fmt.Fprintln(stderr, "l2lb bench: interrupted; testbed removed")
		return 130
	case errors.Is(err, bench.ErrNotRoot):
		fmt.Fprintln(stderr, "l2lb bench: must run as root (it builds network namespaces); try: sudo l2lb bench")
		return 1
	case err != nil:
		fmt.Fprintln(stderr, "l2lb bench:", err)
		return 1
	}
	if err := rep.WriteTable(stdout); err != nil {
		return 1
	}
	if jsonFile != "" {
		if err := rep.WriteJSON(jsonFile); err != nil {
			fmt.Fprintln(stderr, "l2lb bench:", err)
			return 1
		}
	}
	for _, s := range rep.Scenarios {
		if s.Error != "" {
			return 1
		}
	}
	return 0
}
