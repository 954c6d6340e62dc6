package bench

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"math"
	"strconv"
)

// Point is one sample of a time series: T seconds since the start, value V.
type Point struct{ T, V float64 }

// Series is one line of a timeline plot, drawn in its own panel with its
// own y axis, since throughput and connection counts do not share a scale.
type Series struct {
	Name   string
	Unit   string
	Color  string // an SVG colour, e.g. "#1f77b4"
	Points []Point
}

// Marker is a labelled vertical line across every panel, e.g. "SIGTERM f1".
type Marker struct {
	T     float64
	Label string
}

// Timeline is a plot of series over a shared time axis.
type Timeline struct {
	Title   string
	Series  []Series
	Markers []Marker
}

// Layout of the SVG in user units (pixels).
const (
	svgWidth   = 900
	panelH     = 200
	marginL    = 70
	marginR    = 20
	marginTop  = 50
	panelGap   = 50
	marginBot  = 40
	yTickCount = 4
)

// SVG renders the timeline as a standalone SVG 1.1 document, written by
// hand so the binary needs no plotting library. Text goes through XML
// escaping, so names cannot break the document.
func (tl *Timeline) SVG() []byte {
	var b bytes.Buffer
	n := len(tl.Series)
	height := marginTop + n*panelH + max(n-1, 0)*panelGap + marginBot
	plotW := float64(svgWidth - marginL - marginR)
	t0, t1 := math.Inf(1), math.Inf(-1)
	for _, s := range tl.Series {
		for _, p := range s.Points {
			t0, t1 = math.Min(t0, p.T), math.Max(t1, p.T)
		}
	}
	for _, m := range tl.Markers {
		t0, t1 = math.Min(t0, m.T), math.Max(t1, m.T)
	}
	if math.IsInf(t0, 0) || t1 <= t0 {
		t0, t1 = 0, 1
	}
	x := func(t float64) float64 { return marginL + (t-t0)/(t1-t0)*plotW }
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?>`+"\n")
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		svgWidth, height, svgWidth, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15">%s</text>`+"\n", marginL, esc(tl.Title))
	for i, s := range tl.Series {
		top := float64(marginTop + i*(panelH+panelGap))
		bot := top + panelH
		vmax := 0.0
		for _, p := range s.Points {
			if !math.IsNaN(p.V) {
				vmax = math.Max(vmax, p.V)
			}
		}
		if vmax == 0 {
			vmax = 1
		}
		ystep := niceStep(vmax*1.05, yTickCount)
		vmax = ystep * math.Ceil(vmax*1.05/ystep)
		y := func(v float64) float64 { return bot - v/vmax*panelH }
		fmt.Fprintf(&b, `<rect x="%d" y="%.1f" width="%.1f" height="%d" fill="none" stroke="#999"/>`+"\n", marginL, top, plotW, panelH)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f">%s (%s)</text>`+"\n", marginL, top-6, esc(s.Name), esc(s.Unit))
		for v := 0.0; v <= vmax+ystep/2; v += ystep {
			fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eee"/>`+"\n", marginL, y(v), marginL+plotW, y(v))
			fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", marginL-6, y(v)+4, esc(tick(v)))
		}
		var path bytes.Buffer
		for _, p := range s.Points {
			if math.IsNaN(p.V) {
				continue
			}
			cmd := "L"
			if path.Len() == 0 {
				cmd = "M"
			}
			fmt.Fprintf(&path, "%s%.1f %.1f ", cmd, x(p.T), y(p.V))
		}
		if path.Len() > 0 {
			fmt.Fprintf(&b, `<path d="%s" fill="none" stroke="%s" stroke-width="1.5"/>`+"\n", bytes.TrimSpace(path.Bytes()), esc(s.Color))
		}
		for _, m := range tl.Markers {
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#d62728" stroke-dasharray="4 3"/>`+"\n", x(m.T), top, x(m.T), bot)
			if i == 0 {
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" fill="#d62728">%s</text>`+"\n", x(m.T)+3, top+14, esc(m.Label))
			}
		}
	}
	axisY := float64(height - marginBot)
	xstep := niceStep(t1-t0, 10)
	for t := math.Ceil(t0/xstep) * xstep; t <= t1+xstep/1e6; t += xstep {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x(t), axisY+16, esc(tick(t)))
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">time (s)</text>`+"\n", marginL+plotW/2, axisY+32)
	b.WriteString("</svg>\n")
	return b.Bytes()
}

// niceStep returns the smallest 1, 2 or 5 times a power of ten that cuts
// span into at most n steps, so axis ticks fall on round numbers.
func niceStep(span float64, n int) float64 {
	if !(span > 0) {
		return 1
	}
	raw := span / float64(n)
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= raw {
			return m * p
		}
	}
	return 10 * p
}

// tick prints an axis value without float noise (0.30000000000000004).
func tick(v float64) string { return strconv.FormatFloat(v, 'g', 4, 64) }

func esc(s string) string {
	var b bytes.Buffer
	xml.EscapeText(&b, []byte(s))
	return b.String()
}
