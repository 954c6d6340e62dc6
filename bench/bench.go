// Package bench is l2lb's benchmark harness (`l2lb bench`): it builds a
// throw-away namespace testbed (internal/testbed), runs the balancer binary
// on it as an ordinary `l2lb run` process and measures what an operator
// needs before trusting a balancer node: frames per second against the
// kernel's own IPv4 forwarding on the same topology, TCP throughput and
// connection rate through the VIP against going direct, the connection
// table's memory and lookup time, and what a failover of a three-node
// `l2lb run --peers` cluster costs long-lived connections.
//
// Every figure is taken once per run and reported as median and min–max
// over the runs, because the machines it runs on (CI VMs) are shared and
// noisy.
package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Sentinel errors returned (wrapped) by Run.
var (
	// ErrNotRoot means the caller cannot build network namespaces.
	ErrNotRoot = errors.New("bench: must run as root (it builds network namespaces)")
	// ErrUnknownScenario means a requested scenario does not exist.
	ErrUnknownScenario = errors.New("bench: unknown scenario")
	// ErrBadOptions means Options failed validation.
	ErrBadOptions = errors.New("bench: invalid options")
	// ErrTableMiss means a flow just inserted into the table was not found.
	ErrTableMiss = errors.New("bench: conntrack lookup missed an inserted flow")
)

// Scenarios lists the scenario names in the order they run.
var Scenarios = []string{"pps", "tcp", "conn", "failover", "table"}

// Options configures Run. Zero fields take the defaults in brackets.
type Options struct {
	// Exe is the l2lb binary to run as the balancer (required for every
	// scenario except table).
	Exe string
	// Scenarios to run, a subset of Scenarios [all].
	Scenarios []string
	// Runs is how often each scenario is repeated [3].
	Runs int
	// Duration is the length of one measured phase [3 s].
	Duration time.Duration
	// Workers are the balancer fast-path worker counts the pps scenario
	// measures; tcp and conn use the last one [1, 2].
	Workers []int
	// PPSRate is the fixed offered rate (frames/s) at which the pps
	// scenario measures CPU time per frame [50 000].
	PPSRate int
	// Generators is the number of generator sockets and goroutines [2].
	Generators int
	// Streams is the number of parallel TCP streams the tcp scenario runs
	// after its single-stream transfers (1: single stream only) [4].
	Streams int
	// Dialers is the number of parallel dialers of the conn scenario [8].
	Dialers int
	// TableSizes are the table scenario's entry counts [1 M, 10 M].
	TableSizes []int
	// Pin pins the generator to CPU 0 and the balancer to CPU 1 (taskset).
	Pin bool
	// PlotDir, if set, receives a timeline SVG per failover run.
	PlotDir string
	// ProfileDir, if set, makes every pps balancer write a pprof CPU
	// profile there (l2lb run --cpuprofile).
	ProfileDir string
	// Backends are the fast-path backends (l2lb run --backend: afpacket, afxdp, and
	// afxdp+flows, afxdp with the XDP flow cache of BenchFlowCache flows) the pps, tcp and conn
	// scenarios measure in turn, each against the same run's kernel and direct figures
	// [afpacket].
	Backends []string
	// BalancerArgs are appended to every `l2lb run` the pps, tcp and conn
	// scenarios start, to measure other settings (--busy-poll 0, say).
	BalancerArgs []string
	// QuietWait is how long a run on the testbed waits at most for the
	// machine's CPUs to be busy under 10 % before it starts; the share
	// seen is reported either way (negative: measure one quarter second
	// and go on) [10 s].
	QuietWait time.Duration
	// Verbose copies the balancer's log to Logf.
	Verbose bool
	// Logf receives progress messages.
	Logf func(format string, args ...any)
}

// BenchFlowCache is the --xdp-flows of the afxdp+flows backend: room for every flow the
// scenarios make.
const BenchFlowCache = 65536

// backendArgs are the `l2lb run` flags of each backend the bench knows.
var backendArgs = map[string][]string{
	"afpacket":    {"--backend", "afpacket"},
	"afxdp":       {"--backend", "afxdp"},
	"afxdp+flows": {"--backend", "afxdp", "--xdp-flows", strconv.Itoa(BenchFlowCache)},
}

func (o *Options) normalize() error {
	if len(o.Scenarios) == 0 {
		o.Scenarios = slices.Clone(Scenarios)
	}
	for _, s := range o.Scenarios {
		if !slices.Contains(Scenarios, s) {
			return fmt.Errorf("%w: %q (have %s)", ErrUnknownScenario, s, strings.Join(Scenarios, ", "))
		}
	}
	if o.Runs == 0 {
		o.Runs = 3
	}
	if o.Duration == 0 {
		o.Duration = 3 * time.Second
	}
	if len(o.Workers) == 0 {
		o.Workers = []int{1, 2}
	}
	if len(o.Backends) == 0 {
		o.Backends = []string{"afpacket"}
	}
	for _, b := range o.Backends {
		if _, ok := backendArgs[b]; !ok {
			return fmt.Errorf("%w: backend %q is not afpacket, afxdp or afxdp+flows", ErrBadOptions, b)
		}
	}
	if o.PPSRate == 0 {
		o.PPSRate = 50_000
	}
	if o.QuietWait == 0 {
		o.QuietWait = quietWait
	}
	if o.Generators == 0 {
		o.Generators = 2
	}
	if o.Streams == 0 {
		o.Streams = 4
	}
	if o.Dialers == 0 {
		o.Dialers = 8
	}
	if len(o.TableSizes) == 0 {
		o.TableSizes = []int{1_000_000, 10_000_000}
	}
	switch {
	case o.Runs < 0, o.PPSRate < 0, o.Generators < 0, o.Dialers < 0, o.Streams < 0:
		return fmt.Errorf("%w: negative count", ErrBadOptions)
	case o.Duration < 200*time.Millisecond:
		return fmt.Errorf("%w: duration %v is shorter than 200ms", ErrBadOptions, o.Duration)
	}
	for _, w := range o.Workers {
		if w < 1 {
			return fmt.Errorf("%w: workers %d", ErrBadOptions, w)
		}
	}
	for _, n := range o.TableSizes {
		if n < 1 || n > 1<<30 {
			return fmt.Errorf("%w: table size %d", ErrBadOptions, n)
		}
	}
	return nil
}

// needsNet reports whether any chosen scenario needs the testbed.
func (o *Options) needsNet() bool {
	for _, s := range o.Scenarios {
		if s != "table" {
			return true
		}
	}
	return false
}

// Run runs the chosen scenarios and returns the report. A failing scenario
// is recorded in its Scenario.Error and the others still run; Run itself
// fails only when nothing can run or ctx ends (Ctrl-C), and in every case
// removes the testbed and the balancer before it returns.
func Run(ctx context.Context, o Options) (_ *Report, err error) {
	if err := o.normalize(); err != nil {
		return nil, err
	}
	if o.PlotDir != "" {
		// Made now, not when the first plot is due minutes later.
		if err := os.MkdirAll(o.PlotDir, 0o755); err != nil {
			return nil, fmt.Errorf("bench: plot directory: %w", err)
		}
	}
	rep := &Report{Schema: SchemaVersion, Started: time.Now().UTC(), Machine: describeMachine(), Runs: o.Runs,
		Duration: o.Duration.Seconds()}
	var e *env
	if o.needsNet() {
		if os.Geteuid() != 0 {
			return nil, ErrNotRoot
		}
		if o.Exe == "" {
			return nil, fmt.Errorf("%w: no l2lb binary (Exe)", ErrBadOptions)
		}
		logf(o.Logf, "building the testbed")
		if e, err = newEnv(o); err != nil {
			return nil, err
		}
		defer func() {
			if cerr := e.close(); cerr != nil {
				err = errors.Join(err, cerr)
			} else {
				logf(o.Logf, "testbed removed")
			}
		}()
		if err := e.startServers(); err != nil {
			return nil, err
		}
	}
	for _, name := range o.Scenarios {
		sc := &Scenario{Name: name}
		rep.Scenarios = append(rep.Scenarios, sc)
		for run := 1; run <= o.Runs; run++ {
			if e != nil && name != "table" {
				limit := max(o.QuietWait, quietWindow)
				share, quiet, err := waitQuiet(ctx, SystemCPU, sleepCtx, quietWindow, limit)
				if cerr := ctx.Err(); cerr != nil {
					sc.summarize()
					return rep, cerr
				}
				if err != nil {
					return rep, fmt.Errorf("bench: waiting for a quiet machine: %w", err)
				}
				sc.BusyAtStart = append(sc.BusyAtStart, share)
				if !quiet {
					sc.note("run %d started with the CPUs %.0f %% busy after %v of waiting for under %.0f %%: other work shares its figures", run, 100*share, limit, 100*quietShare)
				}
			}
			load := Load1()
			sc.Load1 = append(sc.Load1, load)
			logf(o.Logf, "%s: run %d/%d (load %.2f)", name, run, o.Runs, load)
			var err error
			switch name {
			case "pps":
				err = e.runPPS(ctx, sc)
			case "tcp":
				err = e.runTCP(ctx, sc)
			case "conn":
				err = e.runConn(ctx, sc)
			case "failover":
				err = e.runFailover(ctx, sc)
			case "table":
				err = runTable(ctx, o, sc)
			}
			if cerr := ctx.Err(); cerr != nil {
				sc.summarize()
				return rep, cerr
			}
			if err != nil {
				sc.Error = fmt.Sprintf("run %d: %v", run, err)
				logf(o.Logf, "%s: %v", name, err)
				break
			}
		}
		sc.summarize()
	}
	return rep, nil
}

func logf(f func(string, ...any), format string, args ...any) {
	if f != nil {
		f(format, args...)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
