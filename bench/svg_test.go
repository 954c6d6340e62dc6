package bench

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"strings"
	"testing"
	"time"
)

// parseSVG checks that b is well-formed XML with an <svg> root in the SVG
// namespace and returns the count of each element name.
func parseSVG(t *testing.T, b []byte) map[string]int {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(b))
	counts := map[string]int{}
	depth := 0
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("invalid XML: %v\n%s", err, b)
		}
		switch el := tok.(type) {
		case xml.StartElement:
			if depth == 0 && (el.Name.Local != "svg" || el.Name.Space != "http://www.w3.org/2000/svg") {
				t.Fatalf("root element %v, want svg in the SVG namespace", el.Name)
			}
			counts[el.Name.Local]++
			depth++
		case xml.EndElement:
			depth--
		}
	}
	if depth != 0 || counts["svg"] != 1 {
		t.Fatalf("unbalanced document (depth %d, %d svg elements)", depth, counts["svg"])
	}
	return counts
}

func TestTimelineSVG(t *testing.T) {
	tl := &Timeline{
		Title: `failover <run 1> & "quotes"`,
		Series: []Series{
			{Name: "throughput", Unit: "Mbit/s", Color: "#1f77b4", Points: []Point{{0, 10}, {1, 20}, {2, math.NaN()}, {3, 0}}},
			{Name: "flows <open>", Unit: "flows", Color: "#2ca02c", Points: []Point{{0, 16}, {3, 16}}},
		},
		Markers: []Marker{{1.5, "SIGTERM f1 & co"}},
	}
	b := tl.SVG()
	c := parseSVG(t, b)
	if c["path"] != 2 {
		t.Errorf("%d paths, want one per series", c["path"])
	}
	// One marker line in each panel.
	if !bytes.Contains(b, []byte("SIGTERM f1 &amp; co")) || !bytes.Contains(b, []byte("&lt;run 1&gt;")) {
		t.Errorf("text not escaped:\n%s", b)
	}
	if strings.Contains(string(b), "NaN") {
		t.Errorf("NaN leaked into the SVG:\n%s", b)
	}
	// Degenerate inputs still give a valid document.
	parseSVG(t, (&Timeline{}).SVG())
	parseSVG(t, (&Timeline{Series: []Series{{Name: "x", Points: []Point{{5, 0}}}}}).SVG())
}

func mkSamples(step time.Duration, bytesAt func(i int) uint64, n int) []sample {
	var ss []sample
	for i := range n {
		b := bytesAt(i)
		ss = append(ss, sample{t: time.Duration(i) * step, bytes: b, open: 2, per: []uint64{b, b / 2}})
	}
	return ss
}

func TestOutage(t *testing.T) {
	step := sampleEvery
	// Progress every sample except samples 50..74 (25 samples without
	// progress): the gap between progress samples 49 and 75 is 26 steps.
	stall := func(i int) uint64 {
		if i >= 50 && i < 75 {
			return 49 * 100
		}
		return uint64(i) * 100
	}
	ss := mkSamples(step, stall, 200)
	got, ok := outage(ss, 40*step, 199*step)
	if !ok || got != 26*step {
		t.Errorf("outage = %v, %v; want %v, true", got, ok, 26*step)
	}
	// A window with steady progress shows one sample period.
	if got, ok := outage(ss, 100*step, 199*step); !ok || got != step {
		t.Errorf("steady outage = %v, %v; want %v", got, ok, step)
	}
	// A window ending one sample after the last progress is not a stall.
	if got, ok := outage(ss, 100*step, 199*step+step/2); !ok || got != step {
		t.Errorf("outage at window end = %v, %v; want %v, true", got, ok, step)
	}
	// Never resuming: the outage runs to the end of the window.
	dead := func(i int) uint64 { return uint64(min(i, 100)) }
	ss = mkSamples(step, dead, 200)
	if got, ok := outage(ss, 90*step, 199*step); ok || got != 99*step {
		t.Errorf("unrecovered outage = %v, %v; want %v, false", got, ok, 99*step)
	}
}

func TestKeptAt(t *testing.T) {
	step := 100 * time.Millisecond
	ss := []sample{}
	for i := range 30 {
		// Flow 0 always moves; flow 1 stops at sample 15.
		ss = append(ss, sample{t: time.Duration(i) * step, open: 2, per: []uint64{uint64(i), uint64(min(i, 15))}})
	}
	if got := keptAt(ss, 12*step); got != 2 {
		t.Errorf("keptAt(1.2s) = %d, want 2", got)
	}
	if got := keptAt(ss, 29*step); got != 1 {
		t.Errorf("keptAt(2.9s) = %d, want 1", got)
	}
	ss[29].open = 0
	if got := keptAt(ss, 29*step); got != 0 {
		t.Errorf("keptAt with no open flow = %d, want 0", got)
	}
	tl := timeline(ss, 2)
	if len(tl.Series) != 3 || len(tl.Series[0].Points) == 0 {
		t.Fatalf("timeline = %+v", tl)
	}
	parseSVG(t, tl.SVG())
}

func TestNiceStep(t *testing.T) {
	for _, c := range []struct {
		span float64
		n    int
		want float64
	}{{10.8, 10, 2}, {17.6, 4, 5}, {310, 4, 100}, {0.9, 10, 0.1}, {0, 4, 1}} {
		if got := niceStep(c.span, c.n); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("niceStep(%v, %d) = %v, want %v", c.span, c.n, got, c.want)
		}
	}
	if got := tick(0.1 + 0.2); got != "0.3" {
		t.Errorf("tick(0.1+0.2) = %q", got)
	}
}
