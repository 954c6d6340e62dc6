package ipv6

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/testbed"
)

// spreadConns is the number of IPv6 connections of the spreading test. The issue asks for 600
// within +-15 % of the weighted share; at 600 the binomial noise alone breaks that bound in a few
// per cent of runs (f1's share at -r 50 is 120 with a standard deviation of 9.8 against a
// tolerance of 18: 1.8 standard deviations), so, as e2e's IPv4 test does, three times as many are
// made: the same bound then sits beyond 3 standard deviations, and a real weighting error still
// fails it.
const spreadConns = 1800

// dualConns is the least number of IPv4 connections made to the IPv4 VIP at the same time; they
// go on in batches of dualBatch until the IPv6 ones are done.
const (
	dualConns = 300
	dualBatch = 50
)

// selfWeight is f1's weight (-r) in the spreading test; the others weigh 100.
const selfWeight = 50

// Connections to the IPv6 VIP from many client IPv6 addresses are spread by weight (-p 0, -r 50
// for f1) within +-15 %, each answered by exactly one SYN-ACK, from the MAC of the frontend that
// answered, with no reset anywhere — on f1's own share (re-injected on lo) as on the forwarded
// ones — while IPv4 connections to the IPv4 VIP run at the same time, with the same properties.
func TestIPv6SpreadExactlyOnce(t *testing.T) {
	bed := needBed(t)
	startBalancer(t, bed, options{extra: []string{"-p", "0", "-r", fmt.Sprint(selfWeight)}})
	caps := startCaptures(t, bed.Clients...)
	src6 := sources6(bed)
	raddr6 := netip.AddrPortFrom(vip6(bed), tcpPort)
	raddr4 := netip.AddrPortFrom(vip4(bed), tcpPort)
	start := time.Now()
	var (
		conns4 []conn
		took4  time.Duration
		wg     sync.WaitGroup
		done6  = make(chan struct{})
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for tried := 0; ; tried += dualBatch {
			select {
			case <-done6:
				if tried >= dualConns {
					took4 = time.Since(start)
					return
				}
			default:
			}
			conns4 = append(conns4, askMany(t, dualBatch, sources4(bed), raddr4)...)
		}
	}()
	conns6 := askMany(t, spreadConns, src6, raddr6)
	took6 := time.Since(start)
	close(done6)
	wg.Wait()
	t.Logf("%d IPv6 connections from %d client addresses in %v; %d IPv4 connections at the same time in %v",
		len(conns6), len(src6), took6.Round(time.Millisecond), len(conns4), took4.Round(time.Millisecond))
	time.Sleep(300 * time.Millisecond) // let the last FIN/ACKs (or stray RSTs) arrive
	capStats := stopCaptures(t, caps)

	// Shares proportional to the weights, +-15 %.
	weights := map[string]int{}
	sum := 0
	for i, f := range bed.Frontends {
		w := 100
		if i == 0 {
			w = selfWeight
		}
		weights[f.Name] = w
		sum += w
	}
	counts6, counts4 := countNames(conns6), countNames(conns4)
	t.Logf("IPv6, -r %d: connections per frontend %v", selfWeight, counts6)
	t.Logf("IPv4 (dual stack), -r %d: connections per frontend %v", selfWeight, counts4)
	for _, f := range bed.Frontends {
		want := float64(len(conns6)) * float64(weights[f.Name]) / float64(sum)
		got := counts6[f.Name]
		t.Logf("IPv6: %s answered %d, expected %.0f (weight %d of %d): %+.1f %%", f.Name, got, want, weights[f.Name], sum, 100*(float64(got)-want)/want)
		if d := float64(got) - want; d > 0.15*want || d < -0.15*want {
			t.Errorf("IPv6: %s answered %d of %d connections, want %.0f +-15%% (weight %d of %d)",
				f.Name, got, len(conns6), want, weights[f.Name], sum)
		}
	}
	for _, cs := range []map[string]int{counts6, counts4} {
		for name := range cs {
			if h := bed.Host(name); h == nil || name[0] != 'f' {
				t.Errorf("unexpected answer %q: not a frontend", name)
			}
		}
	}

	// Exactly one SYN-ACK per connection, from the MAC of the frontend that answered, and no
	// RST. A 4-tuple may be reused by a later connection (the server closes first, so the
	// client keeps no TIME-WAIT), so connections are matched to the capture's handshakes per
	// flow.
	type key struct {
		client string
		flow   testbed.Flow
	}
	byFlow := map[key][]string{}
	for _, list := range [][]conn{conns6, conns4} {
		for _, c := range list {
			remote := raddr4
			if c.local.Addr().Is6() {
				remote = raddr6
			}
			k := key{c.src.Host.Name, testbed.Flow{Local: c.local, Remote: remote}}
			byFlow[k] = append(byFlow[k], c.name)
		}
	}
	clean := map[string]map[string]int{"IPv4": {}, "IPv6": {}}
	var bad []string
	for k, names := range byFlow {
		hss := capStats[k.client].HandshakesOf(k.flow)
		var macOwners []string
		ok := len(hss) == len(names)
		for _, hs := range hss {
			if hs.SYNACKs != 1 {
				ok = false
			}
			for _, m := range hs.SYNACKMACs {
				owner := "unknown MAC " + m.String()
				if h := bed.HostByMAC(m); h != nil {
					owner = h.Name
				}
				macOwners = append(macOwners, owner)
			}
		}
		sort.Strings(names)
		sort.Strings(macOwners)
		if !ok || !slices.Equal(names, macOwners) {
			var desc []string
			for _, hs := range hss {
				desc = append(desc, fmt.Sprintf("%d SYN, %d SYN-ACK from %v", hs.SYNs, hs.SYNACKs, hs.SYNACKMACs))
			}
			bad = append(bad, fmt.Sprintf("%s %v: %d connection(s) answered by %v; handshakes seen: %v",
				k.client, k.flow.Local, len(names), names, desc))
			continue
		}
		fam := "IPv4"
		if k.flow.Local.Addr().Is6() {
			fam = "IPv6"
		}
		for _, n := range names {
			clean[fam][n]++
		}
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		if len(bad) > 10 {
			bad = append(bad[:10], fmt.Sprintf("... and %d more", len(bad)-10))
		}
		t.Errorf("%d flows not answered by exactly one SYN-ACK from the answering frontend:\n%s", len(bad), strings.Join(bad, "\n"))
	}
	t.Logf("connections answered by exactly one SYN-ACK, per frontend: IPv6 %v, IPv4 %v", clean["IPv6"], clean["IPv4"])
	rsts := 0
	for name, st := range capStats {
		for fl, fs := range st.Flows {
			if fs.RSTsSent+fs.RSTsReceived == 0 {
				continue
			}
			if _, ours := byFlow[key{name, fl}]; ours {
				rsts++
				if rsts <= 10 {
					t.Errorf("%s saw resets on %v -> %v: %d sent, %d received", name, fl.Local, fl.Remote, fs.RSTsSent, fs.RSTsReceived)
				}
			} else {
				t.Logf("note: %s saw resets on unrelated flow %v -> %v", name, fl.Local, fl.Remote)
			}
		}
	}
	if rsts > 10 {
		t.Errorf("... resets on %d flows of this test in all", rsts)
	}
	// The property must hold for the flows the balancer keeps on f1 (re-injected on lo) as
	// well as for the forwarded ones, in both families.
	for fam, per := range clean {
		for _, f := range bed.Frontends {
			if per[f.Name] == 0 {
				t.Errorf("%s: no cleanly answered connection was handled by %s; exactly-once unproven there", fam, f.Name)
			}
		}
	}
	if n := len(src6); n < 10 {
		t.Errorf("only %d client IPv6 addresses", n)
	}
}
