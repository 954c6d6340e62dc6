package cgp

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/testbed"
)

// TestDryRunChangesNothing runs `l2lb helper -m` on a real interface through
// INTF, STANDBY, ACTIVE, STATUS, STANDBY and QUIT and checks that the "* "
// lines describe the actions while links, addresses, qdiscs, filters and
// sysctls stay exactly as they were, during the run (a packet socket's
// virtual-MAC membership would show as promiscuity, and it dies with the
// process) and after it. It runs on a client, whose settings are all wrong
// for a frontend (no VIP on lo, default ARP sysctls), so that a fix applied
// despite -m would show, and on a prepared frontend.
func TestDryRunChangesNothing(t *testing.T) {
	bed := newBed(t, testbed.Options{Frontends: 1, Clients: 2, ARPTimeout: 600 * time.Millisecond})
	vip := bed.VIPs[0]
	c1, c2, f1 := bed.Clients[0], bed.Clients[1], bed.Frontends[0]
	vipFile := writeVIPFile(t, bed.VIPs)
	waitDAD(t, c2, f1)
	for _, h := range []*testbed.Host{c2, f1} {
		t.Run(h.Name, func(t *testing.T) {
			other := f1.Addr
			if h == f1 {
				other = c2.Addr
			}
			before := snapshot(t, h)
			hp := e2e.StartHelper(t, h, suite.Bin, vipFile, helperOpts, "-m")
			hp.Do("INTF 3", "^INTF 1$", answerLimit)
			if !hp.HasInfo("-m: no sockets opened, no packets forwarded") {
				t.Errorf("no info line saying that -m opens nothing: %q", hp.InfoLines())
			}
			if h == c2 {
				for _, check := range []string{"arp_ignore", "arp_announce", "vip_on_lo"} {
					if !hp.HasInfo("host check " + check + ": ") {
						t.Errorf("on %s (not set up as a frontend) no host check line for %s: %q", h.Name, check, hp.InfoLines())
					}
				}
			}
			hp.Do("STANDBY", "^OK$", answerLimit)
			a, sent := hp.Do(fmt.Sprintf("ACTIVE %v %v", h.Addr, other), "^OK$", answerLimit)
			if d := a.At.Sub(sent); d > activeWithin {
				t.Errorf("ACTIVE -m answered after %v", d)
			}
			for _, want := range []string{
				fmt.Sprintf("would answer ARP for %v on eth0 with %v and announce them", vip, defaultVMAC),
				fmt.Sprintf("would forward VIP traffic to members %v (self, weight 100) %v", h.Addr, other),
			} {
				if !hp.HasInfo(want) {
					t.Errorf("ACTIVE -m: no info line %q; info lines: %q", want, hp.InfoLines())
				}
			}
			// While "active": nothing opened, nothing answers ARP.
			diffSnapshots(t, h.Name, "while -m was active", before, snapshot(t, h))
			if mac, err := c1.ARPResolve(vip); !errors.Is(err, testbed.ErrTimeout) {
				t.Errorf("ARP for %v from %s while %s runs -m ACTIVE: %v, %v; want no answer", vip, c1.Name, h.Name, mac, err)
			}
			st, _ := hp.Do("STATUS", "^OK ", answerLimit)
			for _, want := range []string{"role=active ", "vips=" + vip.String(), fmt.Sprintf("members=%v,%v", h.Addr, other), " dry-run"} {
				if !strings.Contains(st.Text, want) {
					t.Errorf("STATUS %q lacks %q", st.Text, want)
				}
			}
			hp.Do("STANDBY", "^OK$", answerLimit)
			if want := fmt.Sprintf("would stop answering ARP for %v and stop forwarding", vip); !hp.HasInfo(want) {
				t.Errorf("STANDBY -m after ACTIVE: no info line %q; info lines: %q", want, hp.InfoLines())
			}
			e2e.QuitAll(t, answerLimit, t.Fatalf, hp)
			noHelperLeft(t, h, hp.Pid())
			diffSnapshots(t, h.Name, "by a -m run", before, snapshot(t, h))
			hp.CheckTrace("< 1 INTF 3", "> 1 INTF 1", "< 2 STANDBY", "> 2 OK",
				fmt.Sprintf("< 3 ACTIVE %v %v", h.Addr, other), "> 3 OK", "< 4 STATUS", "< 5 STANDBY", "> 5 OK",
				"< 6 QUIT", "> 6 OK")
		})
	}
}
