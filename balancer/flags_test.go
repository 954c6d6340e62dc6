package balancer

import (
	"flag"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
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
	for _, args := range [][]string{{"--backend", "afxdp", "--xdp-mode", "skb"}, {"--xdp-mode", "native"},
		{"--backend", "afxdp", "--xdp-tcp", "afpacket"}, {"--xdp-tcp", "xsk"}} {
		if _, err := parse(args...); err == nil || !strings.Contains(err.Error(), "--xdp-") {
			t.Errorf("%q: %v, want an error naming the flag", args, err)
		}
	}
}
