package hostcfg

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestKeyPath(t *testing.T) {
	good := map[string]string{
		"net.ipv4.conf.all.arp_ignore":       "/r/net/ipv4/conf/all/arp_ignore",
		"net.ipv4.conf.eth0/100.rp_filter":   "/r/net/ipv4/conf/eth0.100/rp_filter",
		"net.ipv4.ip_local_port_range":       "/r/net/ipv4/ip_local_port_range",
		KeyFor("eth0.100", "arp_announce"):   "/r/net/ipv4/conf/eth0.100/arp_announce",
		KeyFor("lo", "rp_filter"):            "/r/net/ipv4/conf/lo/rp_filter",
		"net.ipv4.conf.a/b/c.arp_ignore":     "/r/net/ipv4/conf/a.b.c/arp_ignore",
		"net.core.devconf_inherit_init_net":  "/r/net/core/devconf_inherit_init_net",
		"net.ipv4.conf.br-lan_1.arp_ignore":  "/r/net/ipv4/conf/br-lan_1/arp_ignore",
		"net.ipv6.conf.default.disable_ipv6": "/r/net/ipv6/conf/default/disable_ipv6",
	}
	for key, want := range good {
		got, err := keyPath("/r", key)
		if err != nil || got != want {
			t.Errorf("keyPath(%q) = %q, %v; want %q", key, got, err, want)
		}
	}
	for _, key := range []string{
		"", "net", "kernel.hostname", "vm.swappiness", "net..ipv4", "net.ipv4.", ".net.ipv4",
		"net.ipv4.conf.//.arp_ignore",  // would map to ".."
		"net.ipv4.conf./.arp_ignore",   // would map to "."
		"net.ipv4.conf.a b.arp_ignore", // blanks are not valid in names
		"net.ipv4.conf.a\x00.arp_ignore",
	} {
		if got, err := keyPath("/r", key); !errors.Is(err, ErrBadKey) {
			t.Errorf("keyPath(%q) = %q, %v; want ErrBadKey", key, got, err)
		}
	}
}

func TestProcSysctlOnTree(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "net", "ipv4", "conf", "eth0.100")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "arp_ignore")
	if err := os.WriteFile(file, []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := procSysctl{root: root}
	key := KeyFor("eth0.100", "arp_ignore")
	if v, err := s.Get(key); err != nil || v != "0" {
		t.Fatalf("Get = %q, %v; want \"0\"", v, err)
	}
	if err := s.Set(key, "1"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(file); string(b) != "1\n" {
		t.Fatalf("file holds %q after Set", b)
	}
	// Set never creates entries: a missing one means a wrong key or device.
	missing := KeyFor("eth9", "arp_ignore")
	if err := s.Set(missing, "1"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Set(missing) = %v, want ErrNotExist", err)
	}
	if _, err := os.Stat(filepath.Join(root, "net", "ipv4", "conf", "eth9")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("Set created a directory")
	}
	if _, err := s.Get(missing); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Get(missing) = %v, want ErrNotExist", err)
	}
	if _, err := s.Get("kernel.hostname"); !errors.Is(err, ErrBadKey) {
		t.Fatalf("Get(kernel.hostname) = %v, want ErrBadKey", err)
	}
	if err := s.Set("kernel.hostname", "x"); !errors.Is(err, ErrBadKey) {
		t.Fatalf("Set(kernel.hostname) = %v, want ErrBadKey", err)
	}
}

func TestDryRunSysctl(t *testing.T) {
	f := &fakeSysctl{vals: map[string]string{"net.ipv4.conf.all.arp_ignore": "0", portRangeKey: "32768\t60999"}}
	var logged []string
	d := DryRunSysctl(f, func(s string) { logged = append(logged, s) })
	if v, err := d.Get("net.ipv4.conf.all.arp_ignore"); err != nil || v != "0" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	if err := d.Set("net.ipv4.conf.all.arp_ignore", "1"); err != nil {
		t.Fatal(err)
	}
	if err := d.Set(portRangeKey, "50000 54000"); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"would run: sysctl -w net.ipv4.conf.all.arp_ignore=1",
		`would run: sysctl -w net.ipv4.ip_local_port_range="50000 54000"`,
	}
	if !slices.Equal(logged, want) {
		t.Fatalf("log = %q, want %q", logged, want)
	}
	if len(f.sets) != 0 || f.vals["net.ipv4.conf.all.arp_ignore"] != "0" {
		t.Fatalf("dry run wrote: %v", f.sets)
	}
	if err := DryRunSysctl(f, nil).Set("net.x", "1"); err != nil {
		t.Fatal(err)
	}
}
