package balancer

import (
	"flag"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/l2lb/l2lb/hostcfg"
)

// TestFlagsCoalesce checks that --coalesce reaches the configuration and that values the ring
// would refuse, or a backend it does not apply to, are refused with the flag's name; likewise
// --xdp-mode.
func TestFlagsCoalesce(t *testing.T) {
	parse := func(args ...string) (Config, error) {
		var f Flags
		fs := flag.NewFlagSet("run", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		f.Register(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		return f.Config("static", "n1", slog.New(slog.DiscardHandler))
	}
	c, err := parse("--coalesce", "200us")
	if err != nil || c.Coalesce != 200*time.Microsecond {
		t.Errorf("--coalesce 200us: %v, %v", c.Coalesce, err)
	}
	if c, err := parse(); err != nil || c.Coalesce != 0 {
		t.Errorf("default: %v, %v", c.Coalesce, err)
	}
	if _, err := parse("--coalesce", "100us", "--backend", "afxdp"); err != nil {
		t.Errorf("--coalesce with afxdp's TCP rings: %v", err)
	}
	for _, args := range [][]string{{"--coalesce", "2ms"}, {"--coalesce", "-1us"}, {"--coalesce", "100us", "--backend", "afxdp", "--xdp-tcp", "xsk"}} {
		if _, err := parse(args...); err == nil || !strings.Contains(err.Error(), "--coalesce") {
			t.Errorf("%q: %v, want an error naming --coalesce", args, err)
		}
	}
	if _, err := parse("--backend", "afxdp", "--xdp-mode", "generic"); err != nil {
		t.Errorf("--xdp-mode generic: %v", err)
	}
	if _, err := parse("--backend", "afxdp", "--xdp-flows", "65536"); err != nil {
		t.Errorf("--xdp-flows 65536: %v", err)
	}
	for _, args := range [][]string{{"--backend", "afxdp", "--xdp-mode", "skb"}, {"--xdp-mode", "native"},
		{"--backend", "afxdp", "--xdp-tcp", "afpacket"}, {"--xdp-tcp", "xsk"}, {"--xdp-flows", "64"},
		{"--backend", "afxdp", "--xdp-flows", "-1"}, {"--backend", "afxdp", "--xdp-flows", "16777217"}} {
		if _, err := parse(args...); err == nil || !strings.Contains(err.Error(), "--xdp-") {
			t.Errorf("%q: %v, want an error naming the flag", args, err)
		}
	}
}

// TestFlagsOverloadNice checks --overload-nice: -10 by default, 0 turns it off, and values that
// would not raise a thread are refused with the flag's name.
func TestFlagsOverloadNice(t *testing.T) {
	parse := func(args ...string) (Config, error) {
		var f Flags
		fs := flag.NewFlagSet("run", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		f.Register(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		return f.Config("static", "n1", slog.New(slog.DiscardHandler))
	}
	if c, err := parse(); err != nil || c.Priority != hostcfg.ThreadNice(-10) {
		t.Errorf("default: %v, %v; want ThreadNice(-10)", c.Priority, err)
	}
	if c, err := parse("--overload-nice", "0"); err != nil || c.Priority != nil {
		t.Errorf("--overload-nice 0: %v, %v; want none", c.Priority, err)
	}
	if c, err := parse("--overload-nice", "-20"); err != nil || c.Priority != hostcfg.ThreadNice(-20) {
		t.Errorf("--overload-nice -20: %v, %v", c.Priority, err)
	}
	for _, v := range []string{"5", "-21"} {
		if _, err := parse("--overload-nice", v); err == nil || !strings.Contains(err.Error(), "--overload-nice") {
			t.Errorf("--overload-nice %s: %v, want an error naming the flag", v, err)
		}
	}
}
