package e2e

import (
	"bytes"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/testbed"
)

// SuiteOptions says what Suite.Run prepares before a package's tests run.
type SuiteOptions struct {
	// Name is the package's path below the module root ("e2e", "e2e/ops"): it names the
	// temporary directory ("l2lb-<name with dashes>-") and prefixes every message the
	// suite writes to standard error.
	Name string
	// Tools are the commands the testbeds need besides root privileges (see Missing).
	Tools []string
	// SharedBed builds one testbed (default options) for every test of the package.
	SharedBed bool
	// Setup runs on the shared bed once it is built, for example to start the frontends'
	// servers; its error is reported by NeedBed to every test that needs the bed.
	Setup func(bed *testbed.Bed) error
}

// Suite is what a package's TestMain prepares once for all its tests: the l2lb binary,
// whether namespace testbeds can be built here, and, when asked for, a shared testbed.
type Suite struct {
	// Bin is the freshly built l2lb binary.
	Bin string
	// Missing names the prerequisite that is unavailable, if any (see Missing).
	Missing string
	// Bed is the testbed shared by every test, with SuiteOptions.SharedBed.
	Bed *testbed.Bed
	// BedErr says why the shared bed could not be built or set up.
	BedErr error
}

// Run builds l2lb into a temporary directory, checks the prerequisites, builds the shared
// bed if o asks for one, runs the tests and returns the exit code for os.Exit. The
// temporary directory and the shared bed are removed at the end, and also on Ctrl-C
// (SIGINT or SIGTERM) during `go test`, because removing the namespaces kills whatever the
// tests left running in them.
func (s *Suite) Run(m *testing.M, o SuiteOptions) int {
	flag.Parse() // testing.Verbose below needs the flags
	prefix := o.Name + ":"
	dir, err := os.MkdirTemp("", "l2lb-"+strings.ReplaceAll(o.Name, "/", "-")+"-")
	if err != nil {
		fmt.Fprintln(os.Stderr, prefix, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if s.Bin, err = BuildL2LB(dir); err != nil {
		fmt.Fprintln(os.Stderr, prefix, err)
		return 1
	}
	s.Missing = Missing(o.Tools...)
	if o.SharedBed && s.Missing == "" {
		var opts testbed.Options
		if testing.Verbose() {
			opts.Logf = func(format string, args ...any) { fmt.Fprintf(os.Stderr, prefix+" "+format+"\n", args...) }
		}
		s.Bed, s.BedErr = testbed.New(opts)
		if s.BedErr == nil {
			defer s.Bed.Close()
			sig := make(chan os.Signal, 1)
			signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
			go func() {
				if _, ok := <-sig; ok {
					s.Bed.Close()
					os.RemoveAll(dir)
					os.Exit(130) // 128 + SIGINT, as a shell reports it
				}
			}()
			defer signal.Stop(sig)
			if o.Setup != nil {
				s.BedErr = o.Setup(s.Bed)
			}
		}
	}
	return m.Run()
}

// NeedBed fails (CI=true) or skips the test when the shared testbed cannot be built here,
// and fails it when building it went wrong; what names the tests for the message.
func (s *Suite) NeedBed(t *testing.T, what string) {
	t.Helper()
	Require(t, s.Missing, what)
	if s.BedErr != nil {
		t.Fatalf("building the testbed: %v", s.BedErr)
	}
}

// NewBed fails (CI=true) or skips the test when namespaces cannot be built here, and
// otherwise returns a testbed of its own, logging to the test, that is removed when the
// test ends; what names the tests for the message.
func (s *Suite) NewBed(t *testing.T, what string, opts testbed.Options) *testbed.Bed {
	t.Helper()
	Require(t, s.Missing, what)
	opts.Logf = t.Logf
	bed, err := testbed.New(opts)
	if err != nil {
		t.Fatalf("building the testbed: %v", err)
	}
	t.Cleanup(func() {
		if err := bed.Close(); err != nil {
			t.Errorf("removing the testbed: %v", err)
		}
	})
	return bed
}

// WaitClosed waits up to 3 s until the hosts have no TCP connection that is opening or
// closing (what remains are listeners, established connections and TIME-WAIT).
func WaitClosed(hosts ...*testbed.Host) error {
	if _, err := exec.LookPath("ss"); err != nil {
		time.Sleep(time.Second) // no ss(8): give closings a moment instead
		return nil
	}
	deadline := time.Now().Add(3 * time.Second)
	for _, h := range hosts {
		for {
			out, err := h.Command("ss", "-H", "-tan", "state", "syn-sent", "state", "syn-recv", "state", "fin-wait-1",
				"state", "fin-wait-2", "state", "last-ack", "state", "closing").Output()
			if err != nil {
				return fmt.Errorf("ss in %s: %w", h.Name, err)
			}
			if len(bytes.TrimSpace(out)) == 0 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s still has connections opening or closing after 3 s:\n%s", h.Name, out)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

// Source is one client address connections are made from.
type Source struct {
	// Host is the client.
	Host *testbed.Host
	// Addr is one of its addresses.
	Addr netip.Addr
}

// String returns "<host>/<address>".
func (s Source) String() string { return fmt.Sprintf("%s/%v", s.Host.Name, s.Addr) }

// Sources returns every address (main and extra) of every client of bed.
func Sources(bed *testbed.Bed) []Source {
	var out []Source
	for _, c := range bed.Clients {
		out = append(out, Source{c, c.Addr})
		for _, x := range c.Extra {
			out = append(out, Source{c, x})
		}
	}
	return out
}

// Transfer makes one download or upload (kind "download" or "upload") of size bytes from s to
// raddr, which the testbed verifies, and returns the client's address and the frontends of bed
// whose count of transfers grew meanwhile.
func Transfer(bed *testbed.Bed, s Source, kind string, raddr netip.AddrPort, size int64) (netip.AddrPort, []string, error) {
	before := map[string]testbed.Served{}
	for _, f := range bed.Frontends {
		before[f.Name] = f.Served()
	}
	var local netip.AddrPort
	var err error
	if kind == "download" {
		local, err = s.Host.Download(s.Addr, raddr, size)
	} else {
		local, err = s.Host.Upload(s.Addr, raddr, size)
	}
	if err != nil {
		return local, nil, err
	}
	var by []string
	for _, f := range bed.Frontends {
		if now, was := f.Served(), before[f.Name]; now.Downloads+now.Uploads > was.Downloads+was.Uploads {
			by = append(by, f.Name)
		}
	}
	return local, by, nil
}

// ServeNames returns a SuiteOptions.Setup that starts the testbed's name servers (TCP and UDP) on
// the first VIP of every frontend.
func ServeNames(tcpPorts, udpPorts []uint16) func(*testbed.Bed) error {
	return func(bed *testbed.Bed) error {
		for _, f := range bed.Frontends {
			if _, err := f.ServeName(bed.VIPs[0], tcpPorts, udpPorts); err != nil {
				return err
			}
		}
		return nil
	}
}
