package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

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
