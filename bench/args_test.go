package bench

import (
	"errors"
	"io"
	"slices"
	"testing"
	"time"
)

// TestParseArgsBackends checks that --backends lists the backends pps measures in turn, that
// afpacket is the default, and that normalize refuses a backend l2lb run does not have.
func TestParseArgsBackends(t *testing.T) {
	o, _, err := ParseArgs([]string{"pps", "--backends", "afpacket, afxdp", "--workers", "1"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.Backends, []string{"afpacket", "afxdp"}) || !slices.Equal(o.Scenarios, []string{"pps"}) {
		t.Errorf("parsed %q %q", o.Backends, o.Scenarios)
	}
	if err := o.normalize(); err != nil {
		t.Errorf("normalize: %v", err)
	}
	var def Options
	if err := def.normalize(); err != nil || !slices.Equal(def.Backends, []string{"afpacket"}) {
		t.Errorf("default backends %q, %v", def.Backends, err)
	}
	o, _, err = ParseArgs([]string{"--backends", "dpdk"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := o.normalize(); !errors.Is(err, ErrBadOptions) {
		t.Errorf("backend dpdk: %v, want ErrBadOptions", err)
	}
}

// TestParseArgsQuietWait checks --quiet-wait and its default.
func TestParseArgsQuietWait(t *testing.T) {
	o, _, err := ParseArgs([]string{"pps", "--quiet-wait", "2s"}, io.Discard)
	if err != nil || o.QuietWait != 2*time.Second {
		t.Errorf("--quiet-wait 2s: %v, %v", o.QuietWait, err)
	}
	o, _, err = ParseArgs([]string{"pps"}, io.Discard)
	if err != nil || o.QuietWait != quietWait {
		t.Errorf("default quiet wait %v, %v, want %v", o.QuietWait, err, quietWait)
	}
	var def Options
	if err := def.normalize(); err != nil || def.QuietWait != quietWait {
		t.Errorf("normalized zero quiet wait %v, %v", def.QuietWait, err)
	}
}
