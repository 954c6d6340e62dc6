package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

func TestSummarize(t *testing.T) {
	nan := math.NaN()
	cases := []struct {
		in            []float64
		med, min, max float64
		n             int
	}{
		{[]float64{3, 1, 2}, 2, 1, 3, 3},
		{[]float64{4, 1, 3, 2}, 2.5, 1, 4, 4},
		{[]float64{7}, 7, 7, 7, 1},
		{[]float64{5, nan, 1}, 3, 1, 5, 2},
		{[]float64{-1, -3, 10, 0, 2}, 0, -3, 10, 5},
	}
	for _, c := range cases {
		in := append([]float64(nil), c.in...)
		s := Summarize(c.in)
		if s.Median != c.med || s.Min != c.min || s.Max != c.max || s.N != c.n {
			t.Errorf("Summarize(%v) = %+v, want median %v min %v max %v n %d", in, s, c.med, c.min, c.max, c.n)
		}
		for i := range in {
			if !(in[i] == c.in[i] || math.IsNaN(in[i]) && math.IsNaN(c.in[i])) {
				t.Errorf("Summarize reordered its input: %v -> %v", in, c.in)
				break
			}
		}
	}
	for _, in := range [][]float64{nil, {nan, nan}} {
		if s := Summarize(in); !math.IsNaN(s.Median) || !math.IsNaN(s.Min) || !math.IsNaN(s.Max) || s.N != 0 {
			t.Errorf("Summarize(%v) = %+v, want NaNs and N=0", in, s)
		}
	}
}

func TestProcessCPUSelf(t *testing.T) {
	// Burn some CPU so the counter has certainly moved past zero ticks.
	end := time.Now().Add(50 * time.Millisecond)
	for x := 0; time.Now().Before(end); x++ {
		_ = x * x
	}
	d, err := ProcessCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// The clock is exact to the scheduler's accounting, not to a 4 ms
	// tick, so 50 ms of spinning shows as at least 45 ms.
	if d < 45*time.Millisecond {
		t.Errorf("own CPU time %v after burning 50ms, want >= 45ms", d)
	}
}

func TestParseSystemCPU(t *testing.T) {
	in := "cpu  100 5 50 1000 20 3 7 400 9 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"
	busy, total, err := ParseSystemCPU([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	// busy = user+nice+system+irq+softirq = 165 ticks; total = first 8 = 1585.
	if busy != 1650*time.Millisecond || total != 15850*time.Millisecond {
		t.Errorf("busy %v total %v, want 1.65s and 15.85s", busy, total)
	}
	for _, bad := range []string{"cpu0 1 2 3 4 5 6 7 8", "cpu 1 2 3", "cpu 1 2 x 4 5 6 7 8"} {
		if _, _, err := ParseSystemCPU([]byte(bad)); !errors.Is(err, ErrProcStat) {
			t.Errorf("ParseSystemCPU(%q) err = %v, want ErrProcStat", bad, err)
		}
	}
}

func TestParseSwitches(t *testing.T) {
	in := "Name:\tl2lb\nState:\tS (sleeping)\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n"
	if n, err := ParseSwitches([]byte(in)); err != nil || n != 127 {
		t.Errorf("ParseSwitches = %d, %v; want 127", n, err)
	}
	for _, bad := range []string{"Name:\tl2lb\n", "voluntary_ctxt_switches:\t1\n", "voluntary_ctxt_switches:\tx\nnonvoluntary_ctxt_switches:\t1\n"} {
		if _, err := ParseSwitches([]byte(bad)); !errors.Is(err, ErrProcStat) {
			t.Errorf("ParseSwitches(%q) err = %v, want ErrProcStat", bad, err)
		}
	}
}

// TestProcessSwitchesSelf sees this process's switches grow when a thread sleeps.
func TestProcessSwitchesSelf(t *testing.T) {
	a, err := ProcessSwitches(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		time.Sleep(time.Millisecond)
	}
	b, err := ProcessSwitches(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if b <= a {
		t.Errorf("context switches %d then %d after five sleeps, want growth", a, b)
	}
}

// fakeCPU is a /proc/stat that advances by one window per read, busy for
// the given shares of each window in turn (the last repeats).
type fakeCPU struct {
	busy, total time.Duration
	shares      []float64
	reads       int
}

func (f *fakeCPU) sample() (time.Duration, time.Duration, error) {
	if f.reads > 0 {
		sh := f.shares[min(f.reads-1, len(f.shares)-1)]
		f.total += 500 * time.Millisecond // two CPUs, one quarter second
		f.busy += time.Duration(sh * float64(500*time.Millisecond))
	}
	f.reads++
	return f.busy, f.total, nil
}

func TestWaitQuiet(t *testing.T) {
	noSleep := func(context.Context, time.Duration) error { return nil }
	cases := []struct {
		name    string
		shares  []float64
		quiet   bool
		share   float64
		windows int
	}{
		{"quiet at once", []float64{0.02}, true, 0.02, 1},
		{"quiet after the teardown", []float64{0.9, 0.6, 0.3, 0.05}, true, 0.05, 4},
		{"never quiet", []float64{0.5}, false, 0.5, 40},
	}
	for _, c := range cases {
		f := &fakeCPU{shares: c.shares}
		share, quiet, err := waitQuiet(context.Background(), f.sample, noSleep, quietWindow, quietWait)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if quiet != c.quiet || math.Abs(share-c.share) > 1e-9 || f.reads-1 != c.windows {
			t.Errorf("%s: share %.2f quiet %v after %d windows, want %.2f %v after %d",
				c.name, share, quiet, f.reads-1, c.share, c.quiet, c.windows)
		}
	}
	// A cancelled context ends the wait with its error.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	f := &fakeCPU{shares: []float64{0.9}}
	if _, quiet, err := waitQuiet(ctx, f.sample, sleepCtx, quietWindow, quietWait); !errors.Is(err, context.Canceled) || quiet {
		t.Errorf("cancelled: quiet %v err %v, want context.Canceled", quiet, err)
	}
	// A sample that fails fails the wait.
	boom := func() (time.Duration, time.Duration, error) { return 0, 0, ErrProcStat }
	if _, _, err := waitQuiet(context.Background(), boom, noSleep, quietWindow, quietWait); !errors.Is(err, ErrProcStat) {
		t.Errorf("failing sample: err %v, want ErrProcStat", err)
	}
}

func sampleReport() *Report {
	r := &Report{Schema: SchemaVersion, Started: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
		Machine: Machine{Kernel: "Linux 6.18", CPUs: 2, Model: "test", Go: "go1.26", Load1: 0.5}, Runs: 3, Duration: 3}
	sc := &Scenario{Name: "pps", BusyAtStart: []float64{0.02, 0.31}}
	for _, v := range []float64{100, 300, 200} {
		sc.add("l2lb w1 delivered", "frames/s", v)
	}
	for _, v := range []float64{0.5, math.NaN(), 0.7} {
		sc.add("l2lb w1 / kernel", "ratio", v)
	}
	for _, v := range []float64{0.8, 0.9, 1.1} {
		sc.add("l2lb w1 / kernel RPS", "ratio", v)
	}
	sc.note("a note")
	sc.note("a note")
	h := Headline{Label: "l2lb 1 worker(s) / kernel router with RPS =", Metric: "l2lb w1 / kernel RPS",
		Beside: "l2lb w1 / kernel", BesideLabel: "/ inline kernel router ="}
	sc.headline(h)
	sc.headline(h)
	sc.summarize()
	r.Scenarios = append(r.Scenarios, sc, &Scenario{Name: "tcp", Error: "run 1: boom"})
	return r
}

func TestReportJSONSchema(t *testing.T) {
	r := sampleReport()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"schema", "started", "machine", "runs", "duration_s", "scenarios"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("JSON lacks top-level %q: %s", k, b)
		}
	}
	if raw["schema"] != float64(SchemaVersion) {
		t.Errorf("schema = %v", raw["schema"])
	}
	m := raw["machine"].(map[string]any)
	for _, k := range []string{"kernel", "cpus", "cpu_model", "go", "load1"} {
		if _, ok := m[k]; !ok {
			t.Errorf("machine lacks %q", k)
		}
	}
	scs := raw["scenarios"].([]any)
	pps := scs[0].(map[string]any)
	if pps["name"] != "pps" || len(pps["notes"].([]any)) != 1 || len(pps["busy_at_start_per_run"].([]any)) != 2 {
		t.Errorf("pps scenario = %v", pps)
	}
	if hs, _ := pps["headlines"].([]any); len(hs) != 1 || hs[0].(map[string]any)["metric"] != "l2lb w1 / kernel RPS" ||
		hs[0].(map[string]any)["beside"] != "l2lb w1 / kernel" {
		t.Errorf("pps headlines = %v", pps["headlines"])
	}
	if scs[1].(map[string]any)["error"] != "run 1: boom" {
		t.Errorf("tcp scenario = %v", scs[1])
	}
	ms := pps["metrics"].([]any)
	del := ms[0].(map[string]any)
	if del["name"] != "l2lb w1 delivered" || del["unit"] != "frames/s" || del["median"] != 200.0 ||
		del["min"] != 100.0 || del["max"] != 300.0 || del["n"] != 3.0 || len(del["values"].([]any)) != 3 {
		t.Errorf("metric = %v", del)
	}
	rat := ms[1].(map[string]any)
	if vals := rat["values"].([]any); vals[1] != nil || rat["median"] != 0.6 {
		t.Errorf("NaN run should be null and the median 0.6: %v", rat)
	}
	// And back.
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	got := back.Scenarios[0].Metrics[1]
	if len(got.Values) != 3 || !math.IsNaN(got.Values[1]) || got.Median != 0.6 {
		t.Errorf("round trip: %+v", got)
	}
}

func TestWriteTable(t *testing.T) {
	var buf bytes.Buffer
	if err := sampleReport().WriteTable(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	head := "pps headline: l2lb 1 worker(s) / kernel router with RPS = 0.900 (min 0.800, max 1.100); / inline kernel router = 0.600\n"
	if !strings.HasPrefix(out, strings.SplitN(out, "\n", 2)[0]+"\n\n"+head) {
		t.Errorf("table does not lead with the headline %q:\n%s", head, out)
	}
	for _, want := range []string{"median", "l2lb w1 delivered", "200", "100", "300", "0.600", "tcp failed: run 1: boom", "pps: a note",
		"pps: CPUs busy in the quarter second before each run: 2 %, 31 %"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestFmtNum(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 1234567.8: "1234568", 12.34: "12.3", 0.56789: "0.568", math.NaN(): "-"} {
		if got := fmtNum(v); got != want {
			t.Errorf("fmtNum(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestGenFrames(t *testing.T) {
	dst := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	src := net.HardwareAddr{2, 0, 0, 0, 0, 2}
	c, vip := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.200")
	frames := genFrames(dst, src, c, vip)
	if len(frames) != genFlows {
		t.Fatalf("%d frames, want %d", len(frames), genFlows)
	}
	ports := map[layers.UDPPort]bool{}
	for i, f := range frames {
		if len(f) != 60 {
			t.Fatalf("frame %d is %d bytes, want 60 (64 with FCS)", i, len(f))
		}
		p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
		eth, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
		ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		udp, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if eth == nil || ip == nil || udp == nil {
			t.Fatalf("frame %d does not decode as Ethernet/IPv4/UDP: %v", i, p.ErrorLayer())
		}
		if eth.DstMAC.String() != dst.String() || eth.SrcMAC.String() != src.String() {
			t.Fatalf("frame %d MACs %v -> %v", i, eth.SrcMAC, eth.DstMAC)
		}
		if !ip.SrcIP.Equal(c.AsSlice()) || !ip.DstIP.Equal(vip.AsSlice()) || ip.TTL == 0 || ip.Length != 46 {
			t.Fatalf("frame %d IP %+v", i, ip)
		}
		// Recompute the checksum with gopacket as an independent oracle.
		sum := ip.Checksum
		buf := gopacket.NewSerializeBuffer()
		if err := ip.SerializeTo(buf, gopacket.SerializeOptions{ComputeChecksums: true}); err != nil {
			t.Fatal(err)
		}
		if got := gopacket.NewPacket(buf.Bytes(), layers.LayerTypeIPv4, gopacket.Default).Layer(layers.LayerTypeIPv4).(*layers.IPv4).Checksum; got != sum {
			t.Fatalf("frame %d IP checksum %#04x, want %#04x", i, sum, got)
		}
		if udp.DstPort != discardPort || udp.Length != 26 {
			t.Fatalf("frame %d UDP %+v", i, udp)
		}
		ports[udp.SrcPort] = true
	}
	if len(ports) != genFlows {
		t.Errorf("%d distinct source ports, want %d", len(ports), genFlows)
	}
}

func TestOptionsNormalize(t *testing.T) {
	var o Options
	if err := o.normalize(); err != nil {
		t.Fatal(err)
	}
	if len(o.Scenarios) != len(Scenarios) || o.Runs != 3 || o.Duration != 3*time.Second || len(o.Workers) != 2 {
		t.Errorf("defaults: %+v", o)
	}
	if o.needsNet() != true {
		t.Error("all scenarios need the testbed")
	}
	tableOnly := Options{Scenarios: []string{"table"}}
	if tableOnly.needsNet() {
		t.Error("table alone needs no testbed")
	}
	for _, bad := range []Options{
		{Scenarios: []string{"nope"}},
		{Workers: []int{0}},
		{Duration: time.Millisecond},
		{Runs: -1},
		{TableSizes: []int{0}},
	} {
		err := bad.normalize()
		if !errors.Is(err, ErrBadOptions) && !errors.Is(err, ErrUnknownScenario) {
			t.Errorf("normalize(%+v) = %v, want an error", bad, err)
		}
	}
}

func TestCount(t *testing.T) {
	for n, want := range map[int]string{1_000_000: "1M", 10_000_000: "10M", 5000: "5k", 1234: "1234"} {
		if got := count(n); got != want {
			t.Errorf("count(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestMeasureTableSmall(t *testing.T) {
	r, err := measureTable(t.Context(), 1<<16)
	if err != nil {
		t.Fatal(err)
	}
	// A slot is 32 bytes at a load factor between 3/8 and 3/4, so an entry
	// costs between ~40 and ~90 bytes plus the per-shard overhead.
	if r.bytesPerEntry < 32 || r.bytesPerEntry > 400 {
		t.Errorf("bytes per entry %.1f outside 32..400", r.bytesPerEntry)
	}
	if !(r.lookupMedian > 0) || !(r.lookupMean > 0) || !(r.insertNs > 0) {
		t.Errorf("non-positive times: %+v", r)
	}
}

// TestBackendOrder checks that tcp and conn alternate the order in which they measure the
// backends between runs, and leave the options' own list alone.
func TestBackendOrder(t *testing.T) {
	in := []string{"afpacket", "afxdp"}
	if got := backendOrder(in, 1); !slices.Equal(got, in) {
		t.Errorf("run 1: %v, want %v", got, in)
	}
	if got := backendOrder(in, 2); !slices.Equal(got, []string{"afxdp", "afpacket"}) {
		t.Errorf("run 2: %v, want reversed", got)
	}
	if !slices.Equal(in, []string{"afpacket", "afxdp"}) {
		t.Errorf("the list given was changed: %v", in)
	}
}
