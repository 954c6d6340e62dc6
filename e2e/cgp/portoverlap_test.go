package cgp

import (
	"fmt"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/testbed"
)

// TestHelperPortRangeOverlap: like TestHelperLearnsPortRanges, but f2's and f3's
// net.ipv4.ip_local_port_range overlap (seed step 7 asks for disjoint ranges) while f1's is
// apart. The rule is the same in every l2lb mode: two ranges that overlap are both unused, because
// a reply to a port in both cannot be given to its owner. The active helper's `l2lb status` shows
// it: f2 and f3 with port_conflict and no range, f1 with its own range, and a problem naming the
// overlap; f1's range still works for its own outgoing connections from the VIP.
//
// The code before the redesign (46d3598) also left overlapping ranges out, but said so only in a
// "* " line (written again at every membership update): its status had no port_conflict field and
// no problems, so `l2lb status` showed f2 and f3 just without a range, as if they had not gossiped.
func TestHelperPortRangeOverlap(t *testing.T) {
	bed := newBed(t, testbed.Options{Frontends: 3, Clients: 1})
	vip := bed.VIPs[0]
	f1, f2, f3 := bed.Frontends[0], bed.Frontends[1], bed.Frontends[2]
	c1 := bed.Clients[0]
	// Inside each namespace, before the helpers start (each reads its own range once, to gossip
	// it): f1 keeps the testbed's 50000-54000; f2 55000-59000 and f3 57000-62000 overlap in 57000-59000.
	ranges := map[string][2]uint16{"f1": {50000, 54000}, "f2": {55000, 59000}, "f3": {57000, 62000}}
	for _, f := range bed.Frontends {
		r := ranges[f.Name]
		if err := f.SetSysctl("net.ipv4.ip_local_port_range", fmt.Sprintf("%d %d", r[0], r[1])); err != nil {
			t.Fatal(err)
		}
	}
	vipFile := writeVIPFile(t, bed.VIPs)
	var hps []*e2e.Helper
	for _, f := range bed.Frontends {
		// -p 0: a persistence template would pin the replies below to one frontend.
		hps = append(hps, e2e.StartHelper(t, f, suite.Bin, vipFile, helperOpts, "-p", "0"))
	}
	for _, hp := range hps {
		hp.Do("INTF 1", "^INTF 1$", answerLimit)
		hp.Do("STANDBY", "^OK$", answerLimit)
	}
	hps[0].Do(fmt.Sprintf("ACTIVE %v %v %v", f1.Addr, f2.Addr, f3.Addr), "^OK$", answerLimit)

	// Wait until the gossip has arrived: f1's range is known and the overlap reported.
	wantProblem := fmt.Sprintf("%v 55000-59000 and %v 57000-62000", f2.Addr, f3.Addr)
	var st control.Status
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		st, err = ctlStatus(hps[0].ControlPath())
		m1, _ := st.FindMember(f1.Addr)
		if err == nil && len(st.Members) == 3 && m1.PortLo != 0 && slicesContainsSub(st.Problems, wantProblem) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10 s after ACTIVE f1's status has not both learnt f1's range and reported the overlap %q: members %+v, problems %q (err %v)",
				wantProblem, st.Members, st.Problems, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("f1 status: problems %q", st.Problems)
	for _, f := range bed.Frontends {
		m, ok := st.FindMember(f.Addr)
		if !ok {
			t.Fatalf("f1's status lists no member %v: %+v", f.Addr, st.Members)
		}
		t.Logf("%s: port_conflict=%v range %d-%d", f.Name, m.PortConflict, m.PortLo, m.PortHi)
		switch f {
		case f1:
			if m.PortConflict || m.PortLo != 50000 || m.PortHi != 54000 {
				t.Errorf("f1: port_conflict=%v range %d-%d, want its own 50000-54000 kept, no conflict", m.PortConflict, m.PortLo, m.PortHi)
			}
		default:
			if !m.PortConflict || m.PortLo != 0 || m.PortHi != 0 {
				t.Errorf("%s: port_conflict=%v range %d-%d, want port_conflict and no range (it overlaps the other's)",
					f.Name, m.PortConflict, m.PortLo, m.PortHi)
			}
		}
	}
	if !strings.Contains(strings.Join(st.Problems, "; "), "overlap") {
		t.Errorf("f1's problems %q do not name the overlap", st.Problems)
	}
	// The contract: "The overlap is logged as a `* ` line" (Periodic, every second with -t 1).
	infoBy := time.Now().Add(3 * time.Second)
	for !hps[0].HasInfo(wantProblem) {
		if time.Now().After(infoBy) {
			t.Errorf("f1 wrote no \"* \" line naming the overlap %q; info lines %q", wantProblem, hps[0].InfoLines())
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	hps[0].Do("STATUS", "^OK role=active ", answerLimit)

	// f1's own range is used: replies to its outgoing connections from the VIP all come back
	// to it (scheduled like new flows they would reach it one time in three).
	ln, err := c1.ListenTCP(netip.AddrPortFrom(c1.Addr, 7100))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	msg := []byte("reply must reach f1 by its own range")
	buf := make([]byte, len(msg))
	for i := 0; i < 12; i++ {
		p := uint16(50000 + 17 + i)
		c, err := f1.DialTCP(netip.AddrPortFrom(vip, p), netip.AddrPortFrom(c1.Addr, 7100), 2*time.Second)
		if err != nil {
			t.Fatalf("f1's outgoing connection %d from %v:%d: %v", i, vip, p, err)
		}
		c.SetDeadline(time.Now().Add(2 * time.Second))
		c.Write(msg)
		_, err = io.ReadFull(c, buf)
		c.Close()
		if err != nil || string(buf) != string(msg) {
			t.Fatalf("f1's outgoing connection %d from %v:%d: echo %q, %v", i, vip, p, buf, err)
		}
	}
	e2e.QuitAll(t, answerLimit, t.Errorf, hps...)
}
