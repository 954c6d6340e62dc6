package failover

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/internal/e2e"
)

// Bounds of the graceful leave (issue 13).
const (
	// leaveStreams is the number of long-lived connections.
	leaveStreams = 60
	// unreachableBound bounds how long a leaving frontend that vanished keeps its flows: the
	// active node refreshes a resolved MAC every 10 s and presumes a frontend down after three
	// failed resolutions 1 s apart, each bounded by 500 ms (dataplane/node: resolveInterval,
	// resolveRetry, resolveMaxFailures, ResolveTimeout), then the flows follow --nodest
	// (reschedule: the new frontend answers the client's next segment with a reset). Plus
	// slack for the streams' next write and the reset's way back.
	unreachableBound = 10*time.Second + 3*time.Second + 3*500*time.Millisecond + 2*time.Second
)

// TestHelperModeGracefulLeave plays CGP's maintenance of the active server (seed step 9): with
// 60 long-lived connections over three frontends, STANDBY goes to the active node f1 and ACTIVE to
// f2 with a list that leaves f1 out. f1 is alive and serving, so every connection it holds must
// keep streaming through f2 (which learnt f1's flows only through the sync channel), while new
// connections avoid f1. Then f1 goes away (its link goes down), and its flows are rescheduled
// within the detection bound: their clients get resets, nothing else is disturbed.
func TestHelperModeGracefulLeave(t *testing.T) {
	bed := newBed(t)
	vip := bed.VIPs[0]
	for _, f := range bed.Frontends {
		if _, err := f.ServeName(vip, []uint16{namePort}, nil); err != nil {
			t.Fatal(err)
		}
	}
	echo := startEcho(t, bed)
	srcs := sources(t, bed, 4)
	vipFile := filepath.Join(t.TempDir(), "vipaddrs")
	if err := os.WriteFile(vipFile, []byte(vip.String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var hps []*e2e.Helper
	var addrs []string
	opts := helperOpts
	opts.Control = true
	for _, f := range bed.Frontends {
		hps = append(hps, e2e.StartHelper(t, f, suite.Bin, vipFile, opts))
		addrs = append(addrs, f.Addr.String())
	}
	h1, h2, h3 := hps[0], hps[1], hps[2]
	f1 := bed.Frontends[0]
	for _, hp := range hps {
		hp.Do("INTF 1", "^INTF 1$", helperAnswerLimit)
		hp.Do("STANDBY", "^OK$", helperAnswerLimit)
	}
	h1.Do("ACTIVE "+strings.Join(addrs, " "), "^OK$", helperAnswerLimit)

	ss := startStreams(t, bed, echo, srcs, leaveStreams)
	onF1 := func(s *stream) bool { return s.frontend == "f1" }
	others := func(s *stream) bool { return s.frontend != "f1" }
	if n := ss.perFrontend(onF1)["f1"]; n == 0 {
		t.Fatal("no stream reached f1: the leave would not exercise its flows")
	}
	waitHelperSynced(t, h2, leaveStreams, helperSyncLimit)
	since := time.Now()
	var ps []source
	for _, s := range srcs {
		if s.addr == s.h.Addr || (len(s.h.Extra) > 0 && s.addr == s.h.Extra[0]) {
			ps = append(ps, s)
		}
	}
	probe := startProber(t, bed, ps)
	time.Sleep(time.Until(since.Add(warmup)))

	// f1 leaves the group: STANDBY to it, ACTIVE to f2 without it.
	_, t0 := h1.Do("STANDBY", "^OK$", helperAnswerLimit)
	h2.Do("ACTIVE "+strings.Join(addrs[1:], " "), "^OK$", helperAnswerLimit)
	time.Sleep(helperSettle)
	tLeft := time.Now()
	a, _ := h2.DoQuiet("STATUS", "^OK ", helperAnswerLimit)
	t.Logf("f2 after the leave: STATUS %s", a.Text)
	st, err := ctlStatusOf(h2)
	if err != nil {
		t.Fatal(err)
	}
	var leaving bool
	for _, m := range st.Members {
		if m.Addr == f1.Addr.String() {
			leaving = m.Leaving
			t.Logf("f1 in f2's status: leaving=%v weight=%d flows=%d", m.Leaving, m.Weight, m.Flows)
			if m.Flows == 0 {
				t.Errorf("f1 is listed with no flows, want its streams' flows")
			}
		}
	}
	if !leaving {
		t.Errorf("f2's status does not show f1 as leaving: %+v", st.Members)
	}

	// Every stream kept streaming through the leave, f1's included.
	for _, s := range ss.all {
		if err, at := s.failure(); err != nil {
			t.Errorf("stream %d (frontend %s) failed %v after the leave: %v", s.id, s.frontend, at.Sub(t0).Round(time.Millisecond), err)
		} else if last := time.Unix(0, s.lastRecv.Load()); last.Before(tLeft.Add(-time.Second)) {
			t.Errorf("stream %d (frontend %s) received nothing since %v after the leave", s.id, s.frontend, last.Sub(t0).Round(time.Millisecond))
		}
	}
	// New connections avoid f1 once f2 is active (persistent clients of f1 included).
	after := probe.frontends(t0.Add(time.Second), tLeft)
	for src, per := range after {
		if per["f1"] > 0 {
			t.Errorf("new connections from %v reached the leaving f1 (%v)", src, per)
		}
	}
	okN, failed, firstErr, gap := probe.window(t0, tLeft)
	t.Logf("new connections across the leave: %d ok, %d failed (first: %v), longest gap %v", okN, failed, firstErr, gap.Round(time.Millisecond))
	if gap >= helperNewConnGap {
		t.Errorf("new connections saw no success for %v across the leave, want under %v", gap.Round(time.Millisecond), helperNewConnGap)
	}

	// f1 goes away: its flows are rescheduled within the detection bound.
	tDown := time.Now()
	if _, err := f1.RunIP("link", "set", f1.Ifname, "down"); err != nil {
		t.Fatal(err)
	}
	deadline := tDown.Add(unreachableBound + 5*time.Second)
	for time.Now().Before(deadline) {
		done := true
		for _, s := range ss.all {
			if err, _ := s.failure(); onF1(s) && err == nil {
				done = false
			}
		}
		if done {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	probe.halt()
	var worst time.Duration
	for _, s := range ss.all {
		if !onF1(s) {
			continue
		}
		err, at := s.failure()
		switch {
		case err == nil:
			t.Errorf("stream %d on f1 still runs %v after f1 went away", s.id, time.Since(tDown).Round(time.Millisecond))
		case !s.reset():
			t.Errorf("stream %d on f1 ended with %v, want a reset from the frontend it was rescheduled to", s.id, err)
		default:
			worst = max(worst, at.Sub(tDown))
		}
	}
	t.Logf("f1's %d streams were reset within %v of f1 going away (bound %v)", ss.perFrontend(onF1)["f1"], worst.Round(time.Millisecond), unreachableBound)
	if worst > unreachableBound {
		t.Errorf("f1's flows were rescheduled %v after it went away, want within %v", worst.Round(time.Millisecond), unreachableBound)
	}
	res := ss.finish(tLeft)
	kept, total, resets, nbytes := ss.report(res, others)
	t.Logf("streams on f2 and f3: %d of %d kept, %d reset, %d bytes verified", kept, total, resets, nbytes)
	if kept != total {
		t.Errorf("%d of %d streams on the frontends that stay were disturbed", total-kept, total)
	}
	e2e.QuitAll(t, helperAnswerLimit, t.Errorf, h2, h3)
	h1.CloseInput()
}

// ctlStatusOf reads a helper's status over its control socket.
func ctlStatusOf(hp *e2e.Helper) (control.Status, error) {
	return control.Dial(hp.ControlPath()).Status()
}
