package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
)

// SchemaVersion identifies the layout of the JSON report; it changes when a
// field changes meaning, so tools comparing reports can refuse a mismatch.
const SchemaVersion = 1

// Report is the result of one `l2lb bench` invocation, as printed and as
// written to JSON.
type Report struct {
	// Schema is SchemaVersion.
	Schema int `json:"schema"`
	// Started is when the benchmark began (UTC).
	Started time.Time `json:"started"`
	// Machine describes where it ran, since the figures only mean something
	// for one kernel on one machine.
	Machine Machine `json:"machine"`
	// Runs is the number of repetitions of each scenario.
	Runs int `json:"runs"`
	// Duration is the measuring time of one phase, in seconds.
	Duration float64 `json:"duration_s"`
	// Scenarios are the results, in the order they ran.
	Scenarios []*Scenario `json:"scenarios"`
}

// Machine describes the host the benchmark ran on.
type Machine struct {
	Kernel string `json:"kernel"`
	CPUs   int    `json:"cpus"`
	Model  string `json:"cpu_model"`
	Go     string `json:"go"`
	// Load1 is the 1-minute load average when the benchmark started.
	Load1 float64 `json:"load1"`
}

// Scenario is the outcome of one scenario over all runs.
type Scenario struct {
	Name string `json:"name"`
	// Metrics are in the order the scenario defines.
	Metrics []*Metric `json:"metrics"`
	// Notes explain how the figures were taken and anything skipped.
	Notes []string `json:"notes,omitempty"`
	// Load1 is the 1-minute load average at the start of each run: other
	// work on the machine shows there before it shows in the figures.
	Load1 []float64 `json:"load1_per_run"`
	// BusyAtStart is the share of the CPUs' time that was busy in the
	// quarter second before each run of a scenario on the testbed, after
	// the bench waited for it to fall below 10 % (at most 10 s).
	BusyAtStart []float64 `json:"busy_at_start_per_run,omitempty"`
	// Error is set when the scenario failed; Metrics then hold what was
	// measured before the failure.
	Error string `json:"error,omitempty"`
	// Headlines name the metrics a reader should look at first, printed
	// above the table (pps: l2lb against the kernel router with RPS).
	Headlines []Headline `json:"headlines,omitempty"`
}

// Headline is one figure a scenario leads with: Metric, the name of one of
// its metrics, and Beside, another metric shown next to it for context
// (pps: the ratio to the inline kernel router beside the ratio to the
// kernel router with RPS).
type Headline struct {
	// Label says in words what Metric compares.
	Label string `json:"label"`
	// Metric and Beside are metric names of the same scenario; Beside may
	// be empty.
	Metric string `json:"metric"`
	Beside string `json:"beside,omitempty"`
	// BesideLabel says in words what Beside compares.
	BesideLabel string `json:"beside_label,omitempty"`
}

// Metric is one figure measured once per run.
type Metric struct {
	Name string `json:"name"`
	Unit string `json:"unit"`
	// Values has one entry per run; NaN (null in JSON) marks a run where
	// the figure could not be computed.
	Values []float64 `json:"-"`
	Summary
}

// metricJSON is Metric with NaNs as nulls, which encoding/json cannot
// write as numbers.
type metricJSON struct {
	Name   string     `json:"name"`
	Unit   string     `json:"unit"`
	Values []*float64 `json:"values"`
	Median *float64   `json:"median"`
	Min    *float64   `json:"min"`
	Max    *float64   `json:"max"`
	N      int        `json:"n"`
}

func num(v float64) *float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	return &v
}

// MarshalJSON writes the metric with NaN values as null.
func (m *Metric) MarshalJSON() ([]byte, error) {
	j := metricJSON{Name: m.Name, Unit: m.Unit, Median: num(m.Median), Min: num(m.Min), Max: num(m.Max), N: m.N,
		Values: make([]*float64, len(m.Values))}
	for i, v := range m.Values {
		j.Values[i] = num(v)
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads what MarshalJSON writes, nulls becoming NaN.
func (m *Metric) UnmarshalJSON(b []byte) error {
	var j metricJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	val := func(p *float64) float64 {
		if p == nil {
			return math.NaN()
		}
		return *p
	}
	*m = Metric{Name: j.Name, Unit: j.Unit, Summary: Summary{Median: val(j.Median), Min: val(j.Min), Max: val(j.Max), N: j.N}}
	for _, p := range j.Values {
		m.Values = append(m.Values, val(p))
	}
	return nil
}

// metric returns the scenario's metric called name, creating it.
func (s *Scenario) metric(name, unit string) *Metric {
	for _, m := range s.Metrics {
		if m.Name == name {
			return m
		}
	}
	m := &Metric{Name: name, Unit: unit}
	s.Metrics = append(s.Metrics, m)
	return m
}

// add records one run's value of a metric.
func (s *Scenario) add(name, unit string, v float64) {
	m := s.metric(name, unit)
	m.Values = append(m.Values, v)
}

// headline adds h once.
func (s *Scenario) headline(h Headline) {
	for _, x := range s.Headlines {
		if x == h {
			return
		}
	}
	s.Headlines = append(s.Headlines, h)
}

// find returns the metric called name, or nil.
func (s *Scenario) find(name string) *Metric {
	for _, m := range s.Metrics {
		if m.Name == name {
			return m
		}
	}
	return nil
}

// writeHeadlines prints s's headlines: each metric's median and range, and
// the metric beside it.
func (s *Scenario) writeHeadlines(w io.Writer) {
	for _, h := range s.Headlines {
		m := s.find(h.Metric)
		if m == nil {
			continue
		}
		fmt.Fprintf(w, "%s headline: %s %s (min %s, max %s)", s.Name, h.Label, fmtNum(m.Median), fmtNum(m.Min), fmtNum(m.Max))
		if b := s.find(h.Beside); b != nil {
			fmt.Fprintf(w, "; %s %s", h.BesideLabel, fmtNum(b.Median))
		}
		fmt.Fprintln(w)
	}
}

// note adds an explanation once.
func (s *Scenario) note(format string, args ...any) {
	n := fmt.Sprintf(format, args...)
	for _, x := range s.Notes {
		if x == n {
			return
		}
	}
	s.Notes = append(s.Notes, n)
}

// summarize fills every metric's Summary from its Values.
func (s *Scenario) summarize() {
	for _, m := range s.Metrics {
		m.Summary = Summarize(m.Values)
	}
}

// WriteTable prints the report as an aligned text table: one line per
// metric with median and min–max over the runs.
func (r *Report) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "l2lb bench: %d run(s) of %gs per phase on %s, %d CPUs (%s), load %.2f at start\n\n",
		r.Runs, r.Duration, r.Machine.Kernel, r.Machine.CPUs, r.Machine.Model, r.Machine.Load1)
	heads := false
	for _, s := range r.Scenarios {
		s.writeHeadlines(w)
		heads = heads || len(s.Headlines) > 0
	}
	if heads {
		fmt.Fprintln(w)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tmetric\tmedian\tmin\tmax\tunit\t")
	for _, s := range r.Scenarios {
		for _, m := range s.Metrics {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t\n", s.Name, m.Name, fmtNum(m.Median), fmtNum(m.Min), fmtNum(m.Max), m.Unit)
		}
		if s.Error != "" {
			fmt.Fprintf(tw, "%s\tFAILED\t\t\t\t\t\n", s.Name)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, s := range r.Scenarios {
		if len(s.Load1) > 0 {
			var ls []string
			for _, l := range s.Load1 {
				ls = append(ls, fmt.Sprintf("%.2f", l))
			}
			fmt.Fprintf(w, "\n%s: 1-minute load at the start of each run: %s", s.Name, strings.Join(ls, ", "))
		}
		if len(s.BusyAtStart) > 0 {
			var bs []string
			for _, b := range s.BusyAtStart {
				bs = append(bs, fmt.Sprintf("%.0f %%", 100*b))
			}
			fmt.Fprintf(w, "\n%s: CPUs busy in the quarter second before each run: %s", s.Name, strings.Join(bs, ", "))
		}
		if s.Error != "" {
			fmt.Fprintf(w, "\n%s failed: %s", s.Name, s.Error)
		}
		for _, n := range s.Notes {
			fmt.Fprintf(w, "\n%s: %s", s.Name, n)
		}
	}
	_, err := fmt.Fprintln(w)
	return err
}

// fmtNum prints with about four significant digits, so rates in the
// millions and ratios near one both read well.
func fmtNum(v float64) string {
	switch {
	case math.IsNaN(v):
		return "-"
	case v == 0:
		return "0"
	case math.Abs(v) >= 1000:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

// WriteJSON writes the report, indented, to path.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// describeMachine fills Machine from /proc and the runtime.
func describeMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.Model = strings.TrimSpace(v)
				break
			}
		}
	}
	m.Load1 = Load1()
	return m
}

// Load1 returns the 1-minute load average from /proc/loadavg, or NaN.
func Load1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return math.NaN()
	}
	var l float64
	if _, err := fmt.Sscan(string(b), &l); err != nil {
		return math.NaN()
	}
	return l
}
