package bench

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ParseArgs parses the arguments of `l2lb bench [scenario...] [flags]` (scenario names and flags
// may be mixed) into Options, and returns the --json report path ("" for none). Usage and errors
// go to stderr; -h returns flag.ErrHelp. Exe and Logf are left to the caller.
func ParseArgs(args []string, stderr io.Writer) (Options, string, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: l2lb bench [scenario...] [flags]\n\nBuild a namespace testbed, run the balancer on it and measure it against the kernel, a direct path and HAProxy (root).\nScenarios: %s (default: all)\n\nflags:\n",
			strings.Join(Scenarios, " "))
		fs.PrintDefaults()
	}
	jsonFile := fs.String("json", "", "also write the report as JSON to this `FILE`")
	runs := fs.Int("runs", 3, "repetitions of each scenario (the table shows median and min–max)")
	dur := fs.Duration("duration", 3*time.Second, "length of one measured phase")
	workers := fs.String("workers", "1,2", "fast-path worker counts for pps (tcp and conn use the last)")
	backends := fs.String("backends", "afpacket", "fast-path `BACKENDS` (l2lb run --backend) that pps, tcp and conn measure in turn against the same run's kernel and direct figures, e.g. afpacket,afxdp,afxdp+flows (afxdp with --xdp-flows)")
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
	quiet := fs.Duration("quiet-wait", quietWait, "wait at most this long before each run for the CPUs to be busy under 10 % (negative: measure and go on)")
	var scenarios []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			return Options{}, "", err
		}
		if fs.NArg() == 0 {
			break
		}
		scenarios = append(scenarios, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	o := Options{Scenarios: scenarios, Runs: *runs, Duration: *dur, PPSRate: *rate, Generators: *gens,
		Dialers: *dialers, Streams: *streams, Pin: *pin, Verbose: *verbose, ProfileDir: *profDir, PlotDir: *plotDir,
		BalancerArgs: strings.Fields(*balArgs), QuietWait: *quiet}
	for _, b := range strings.Split(*backends, ",") {
		o.Backends = append(o.Backends, strings.TrimSpace(b))
	}
	var err error
	if o.Workers, err = intList(*workers); err != nil {
		return o, "", fmt.Errorf("%w: --workers: %w", ErrBadOptions, err)
	}
	if o.TableSizes, err = intList(*sizes); err != nil {
		return o, "", fmt.Errorf("%w: --table-sizes: %w", ErrBadOptions, err)
	}
	if *jsonFile != "" {
		// Fail before the run, not after it, when the report has nowhere to go.
		if st, err := os.Stat(filepath.Dir(*jsonFile)); err != nil || !st.IsDir() {
			return o, "", fmt.Errorf("%w: --json %s: directory %s does not exist", ErrBadOptions, *jsonFile, filepath.Dir(*jsonFile))
		}
	}
	return o, *jsonFile, nil
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
