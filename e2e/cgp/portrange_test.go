package cgp

import (
	"fmt"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/e2e"
	"github.com/l2lb/l2lb/internal/testbed"
)

// TestHelperLearnsPortRanges: in helper mode the members learn each other's source-port ranges
// (net.ipv4.ip_local_port_range, seed step 7) over memberlist, so replies to a frontend's own
// outgoing connection from the VIP reach that frontend through the active balancer (issue 4).
func TestHelperLearnsPortRanges(t *testing.T) {
	bed := newBed(t, testbed.Options{Frontends: 3, Clients: 1})
	vip := bed.VIPs[0]
	f1, f2 := bed.Frontends[0], bed.Frontends[1]
	c1 := bed.Clients[0]
	vipFile := writeVIPFile(t, bed.VIPs)
	var hps []*e2e.Helper
	for _, f := range bed.Frontends {
		hps = append(hps, e2e.StartHelper(t, f, suite.Bin, vipFile, helperOpts, "-p", "0")) // no persistence: a client template would pin the replies to one frontend
	}
	defer e2e.QuitAll(t, answerLimit, t.Fatalf, hps...)
	for _, hp := range hps {
		hp.Do("INTF 1", "^INTF 1$", 5*time.Second)
		hp.Do("STANDBY", "^OK$", 5*time.Second)
	}
	members := fmt.Sprintf("%v %v %v", bed.Frontends[0].Addr, bed.Frontends[1].Addr, bed.Frontends[2].Addr)
	hps[0].Do("ACTIVE "+members, "^OK$", 5*time.Second)
	// Wait until the active helper has learnt every member's range over memberlist (its status
	// shows them), so that no check below passes or fails by the scheduler's chance.
	learnt := false
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && !learnt; time.Sleep(100 * time.Millisecond) {
		st, err := control.Dial(hps[0].ControlPath()).Status()
		if err != nil {
			continue
		}
		learnt = len(st.Members) == 3
		for _, m := range st.Members {
			if m.PortLo == 0 {
				learnt = false
			}
		}
	}
	if !learnt {
		t.Fatal("the active helper never learnt the members' source-port ranges over memberlist")
	}

	// A server on the client; f2 connects to it from VIP:port inside f2's range.
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
	port := f2.PortRange[0] + 7
	deadline := time.Now().Add(10 * time.Second)
	var lastErr error
	for attempt := 0; time.Now().Before(deadline); attempt++ {
		conn, err := f2.DialTCP(netip.AddrPortFrom(vip, port+uint16(attempt)), netip.AddrPortFrom(c1.Addr, 7100), time.Second)
		if err != nil {
			lastErr = err
			time.Sleep(200 * time.Millisecond)
			continue
		}
		msg := []byte("reply must reach f2 through the balancer on f1")
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := conn.Write(msg); err == nil {
			buf := make([]byte, len(msg))
			if _, err := io.ReadFull(conn, buf); err == nil && string(buf) == string(msg) {
				conn.Close()
				t.Logf("f2's outgoing connection from %v:%d works after %d attempt(s); the balancer runs on %s", vip, port+uint16(attempt), attempt+1, f1.Name)
				// Without the range a reply is scheduled like a new flow and reaches f2 only by
				// chance (1 in 3): twenty more in a row must all work.
				for i := 0; i < 20; i++ {
					p := port + uint16(attempt) + 1 + uint16(i)
					c, err := f2.DialTCP(netip.AddrPortFrom(vip, p), netip.AddrPortFrom(c1.Addr, 7100), 2*time.Second)
					if err != nil {
						t.Fatalf("outgoing connection %d from %v:%d: %v", i, vip, p, err)
					}
					c.SetDeadline(time.Now().Add(2 * time.Second))
					c.Write(msg)
					if _, err := io.ReadFull(c, buf); err != nil || string(buf) != string(msg) {
						t.Fatalf("outgoing connection %d from %v:%d: echo %q, %v", i, vip, p, buf, err)
					}
					c.Close()
				}
				return
			} else {
				lastErr = fmt.Errorf("echo: %v", err)
			}
		} else {
			lastErr = err
		}
		conn.Close()
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("f2's outgoing connection from the VIP never worked: the active helper did not learn f2's port range %v: %v",
		f2.PortRange, lastErr)
}
