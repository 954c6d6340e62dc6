package main

import (
	"bytes"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/l2lb/l2lb/dataplane"
	"github.com/l2lb/l2lb/vipset"
)

func TestBuildMembers(t *testing.T) {
	self := netip.MustParseAddr("192.0.2.11")
	vips := vipset.New(netip.MustParseAddr("192.0.2.200"))
	ms, err := buildMembers([]string{"192.0.2.11", "192.0.2.12=50", "192.0.2.13,192.0.2.14"},
		[]string{"192.0.2.12=55000-59000"}, 30, map[netip.Addr]bool{self: true}, vips)
	if err != nil {
		t.Fatal(err)
	}
	want := []dataplane.Member{
		{Addr: self, Weight: 30, Local: true},
		{Addr: netip.MustParseAddr("192.0.2.12"), Weight: 50, Ports: dataplane.PortRange{Lo: 55000, Hi: 59000}},
		{Addr: netip.MustParseAddr("192.0.2.13"), Weight: 100},
		{Addr: netip.MustParseAddr("192.0.2.14"), Weight: 100},
	}
	if len(ms) != len(want) {
		t.Fatalf("got %+v", ms)
	}
	for i := range want {
		if ms[i] != want[i] {
			t.Errorf("member %d: got %+v, want %+v", i, ms[i], want[i])
		}
	}
	for _, bad := range []struct {
		members, ranges []string
		msg             string
	}{
		{[]string{"192.0.2.300"}, nil, "not an IPv4"},
		{[]string{"192.0.2.200"}, nil, "that is a VIP"},
		{[]string{"192.0.2.12", "192.0.2.12"}, nil, "given twice"},
		{[]string{"192.0.2.12=x"}, nil, "bad weight"},
		{[]string{"192.0.2.12"}, []string{"192.0.2.13=1-2"}, "not a --member"},
		{[]string{"192.0.2.12"}, []string{"192.0.2.12=9-2"}, "LO <= HI"},
	} {
		_, err := buildMembers(bad.members, bad.ranges, 100, nil, vips)
		if err == nil || !strings.Contains(err.Error(), bad.msg) {
			t.Errorf("%v %v: err %v, want %q", bad.members, bad.ranges, err, bad.msg)
		}
	}
}

func TestRunRejectsBadConfigWithFileAndLine(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "vipaddrs")
	os.WriteFile(f, []byte("192.0.2.200\n10.0.0.0/16\n"), 0o644)
	var out, errb bytes.Buffer
	rc := realMain([]string{"run", "-f", f, "--member", "192.0.2.12"}, &out, &errb)
	if rc == 0 || !strings.Contains(errb.String(), f+":2") || !strings.Contains(errb.String(), "Incorrect mask") {
		t.Fatalf("rc %d, stderr %q", rc, errb.String())
	}
}

func TestUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if rc := realMain(nil, &out, &errb); rc != 2 || !strings.Contains(errb.String(), "l2lb run") {
		t.Fatalf("no args: rc %d %q", rc, errb.String())
	}
	if rc := realMain([]string{"bogus"}, &out, &errb); rc != 2 {
		t.Fatalf("unknown command: rc %d", rc)
	}
	errb.Reset()
	if rc := realMain([]string{"run", "-h"}, &out, &errb); rc != 0 || !strings.Contains(errb.String(), "-member") ||
		!strings.Contains(errb.String(), "(default 15)") {
		t.Fatalf("run -h: rc %d %q", rc, errb.String())
	}
}

func TestDefaultVMAC(t *testing.T) {
	m := defaultVMAC(0x1234)
	if m.String() != "02:6c:32:62:12:34" || m[0]&0x02 == 0 || m[0]&0x01 != 0 {
		t.Fatalf("vmac %v must be locally administered unicast", m)
	}
}

// TestHelpOfEverySubcommand: every subcommand answers -h with its usage line, its description and
// every flag with a description (defaults are shown by the flag package).
func TestHelpOfEverySubcommand(t *testing.T) {
	for name := range synopses {
		var out, errb bytes.Buffer
		args := []string{name, "-h"}
		if rc := realMain(args, &out, &errb); rc != 0 {
			t.Errorf("%s -h: rc %d", name, rc)
		}
		text := errb.String() + out.String()
		if !strings.HasPrefix(text, "usage: l2lb "+name) || !strings.Contains(text, synopses[name][1]) {
			t.Errorf("%s -h does not start with its usage and description:\n%s", name, text)
		}
	}
	var o runOptions
	fs := runFlags(&o, &bytes.Buffer{})
	fs.VisitAll(func(f *flag.Flag) {
		if strings.TrimSpace(f.Usage) == "" {
			t.Errorf("run flag -%s has no description", f.Name)
		}
	})
}
