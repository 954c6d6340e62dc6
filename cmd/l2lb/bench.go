package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/l2lb/l2lb/bench"
)

// cmdBench runs `l2lb bench [scenario...] [flags]`: it builds its own namespace testbed, runs this
// binary as the balancer on it, prints a table of medians and min–max over the runs and optionally
// writes JSON. Everything it creates is removed at the end, also on Ctrl-C.
func cmdBench(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: l2lb bench [scenario...] [flags]\nScenarios: %s (default: all)\n\n",
			strings.Join(bench.Scenarios, " "))
		fs.PrintDefaults()
	}
	jsonFile := fs.String("json", "", "also write the report as JSON to this `FILE`")
	runs := fs.Int("runs", 3, "repetitions of each scenario (the table shows median and min–max)")
	dur := fs.Duration("duration", 3*time.Second, "length of one measured phase")
	workers := fs.String("workers", "1,2", "fast-path worker counts for pps (tcp and conn use the last)")
	rate := fs.Int("rate", 50000, "fixed offered rate (frames/s) at which pps measures CPU per frame")
	gens := fs.Int("generators", 2, "generator sockets/goroutines for pps")
	dialers := fs.Int("dialers", 8, "parallel dialers for conn")
	streams := fs.Int("streams", 4, "parallel TCP streams tcp measures after the single stream (1: single only)")
	sizes := fs.String("table-sizes", "1000000,10000000", "entry counts for table")
	pin := fs.Bool("pin", false, "pin the generator to CPU 0 and the balancer to CPU 1 (taskset)")
	verbose := fs.Bool("v", false, "show the balancer's log")
	balArgs := fs.String("balancer-args", "", "extra `ARGS` (space-separated) for every l2lb run the pps, tcp and conn scenarios start, e.g. \"--busy-poll 0\"")
	plotDir := fs.String("plot", "", "write the failover timeline plots (SVG) into `DIR`")
	profDir := fs.String("cpuprofile-dir", "", "write a CPU profile of each pps balancer into `DIR`")
	// Scenario names and flags may be mixed: parse, take a name, repeat.
	var scenarios []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		scenarios = append(scenarios, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	o := bench.Options{Scenarios: scenarios, Runs: *runs, Duration: *dur, PPSRate: *rate, Generators: *gens,
		Dialers: *dialers, Streams: *streams, Pin: *pin, Verbose: *verbose, ProfileDir: *profDir, PlotDir: *plotDir,
		BalancerArgs: strings.Fields(*balArgs)}
	var err error
	if o.Workers, err = intList(*workers); err != nil {
		fmt.Fprintln(stderr, "l2lb bench: --workers:", err)
		return 2
	}
	if o.TableSizes, err = intList(*sizes); err != nil {
		fmt.Fprintln(stderr, "l2lb bench: --table-sizes:", err)
		return 2
	}
	if o.Exe, err = os.Executable(); err != nil {
		fmt.Fprintln(stderr, "l2lb bench:", err)
		return 1
	}
	if *jsonFile != "" {
		// Fail before the run, not after it, when the report has nowhere to go.
		if st, err := os.Stat(filepath.Dir(*jsonFile)); err != nil || !st.IsDir() {
			fmt.Fprintf(stderr, "l2lb bench: --json %s: directory %s does not exist\n", *jsonFile, filepath.Dir(*jsonFile))
			return 2
		}
	}
	start := time.Now()
	o.Logf = func(f string, a ...any) {
		fmt.Fprintf(stderr, "[%6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(f, a...))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := bench.Run(ctx, o)
	if errors.Is(err, context.Canceled) {
		fmt.Fprintln(stderr, "l2lb bench: interrupted; testbed removed")
		return 130
	}
	if err != nil {
		if errors.Is(err, bench.ErrNotRoot) {
			fmt.Fprintln(stderr, "l2lb bench: must run as root (it builds network namespaces); try: sudo l2lb bench")
		} else {
			fmt.Fprintln(stderr, "l2lb bench:", err)
		}
		return 1
	}
	if err := rep.WriteTable(stdout); err != nil {
		return 1
	}
	if *jsonFile != "" {
		if err := rep.WriteJSON(*jsonFile); err != nil {
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

// intList parses "1,2,3".
func intList(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("%q is not a list of integers", s)
		}
		out = append(out, n)
	}
	return out, nil
}
