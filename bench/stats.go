package bench

import (
	"math"
	"slices"
)

// Summary condenses the values one metric took over repeated runs.
type Summary struct {
	// Median is the middle value (the mean of the two middle values for an
	// even count); medians are what the bars are stated in because
	// one disturbed run on a shared machine moves them least.
	Median float64 `json:"median"`
	// Min and Max bound the values seen.
	Min float64 `json:"min"`
	Max float64 `json:"max"`
	// N is the number of values summarised.
	N int `json:"n"`
}

// Summarize returns the median, minimum and maximum of vs, ignoring NaNs
// (a run where a metric could not be computed). With no usable value it
// returns a Summary of NaNs and N = 0.
func Summarize(vs []float64) Summary {
	var xs []float64
	for _, v := range vs {
		if !math.IsNaN(v) {
			xs = append(xs, v)
		}
	}
	if len(xs) == 0 {
		return Summary{Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	}
	slices.Sort(xs)
	n := len(xs)
	med := xs[n/2]
	if n%2 == 0 {
		med = (xs[n/2-1] + xs[n/2]) / 2
	}
	return Summary{Median: med, Min: xs[0], Max: xs[n-1], N: n}
}

// ratio returns a/b, or NaN when b is not positive, so a failed reference
// measurement shows as missing rather than as an infinite ratio.
func ratio(a, b float64) float64 {
	if !(b > 0) || math.IsNaN(a) {
		return math.NaN()
	}
	return a / b
}
