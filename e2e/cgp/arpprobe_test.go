package cgp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/testbed"
	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
)

// probeEvery is the interval of the client's ARP requests for the VIP. RFC
// 1122 section 2.3.2.1 limits requests to one a second per address on a real
// network; this private test switch is asked twenty times a second so that a
// hand-over gap or a double answer cannot slip between two requests.
const probeEvery = 50 * time.Millisecond

// probeReq is one ARP request the client sent and the replies it got.
type probeReq struct {
	tag     netip.Addr // sender protocol address: the reply's target, which matches it to the request
	sent    time.Time
	replies int
	macs    []string
}

// arpProbe sends ARP requests for a VIP from a client and counts the replies
// to each. All helpers answer with the same virtual MAC, so the count is the
// only way to see two answering nodes from the client. Replies carry no
// request ID, so each request uses the next of several sender addresses of
// the client ("tags") and a reply is matched to the latest request with its
// target address: a reply would have to be late by a whole cycle of tags
// (len(tags) * probeEvery) to be counted against the wrong request.
type arpProbe struct {
	t    *testing.T
	vip  netip.Addr
	tags []netip.Addr
	c    *arp.Client
	mac  net.HardwareAddr
	stop chan struct{}
	wg   sync.WaitGroup

	mu            sync.Mutex
	reqs          []*probeReq
	announcements []time.Time // gratuitous ARP for the VIP seen
	stray         []string    // replies to no request
	err           error
}

func startARPProbe(t *testing.T, h *testbed.Host, vip netip.Addr, tags []netip.Addr) *arpProbe {
	t.Helper()
	p := &arpProbe{t: t, vip: vip, tags: tags, stop: make(chan struct{}), mac: h.MAC}
	err := h.Do(func() error {
		ifi, err := net.InterfaceByName(h.Ifname)
		if err != nil {
			return err
		}
		p.c, err = arp.Dial(ifi)
		return err
	})
	if err != nil {
		t.Fatalf("%s: ARP client: %v", h.Name, err)
	}
	p.wg.Add(2)
	go p.sendLoop()
	go p.readLoop()
	t.Cleanup(func() { p.finish() })
	return p
}

func (p *arpProbe) setErr(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err == nil {
		p.err = err
	}
}

func (p *arpProbe) sendLoop() {
	defer p.wg.Done()
	tick := time.NewTicker(probeEvery)
	defer tick.Stop()
	for i := 0; ; i++ {
		tag := p.tags[i%len(p.tags)]
		pkt, err := arp.NewPacket(arp.OperationRequest, p.mac, tag, net.HardwareAddr{0, 0, 0, 0, 0, 0}, p.vip)
		if err != nil {
			p.setErr(err)
			return
		}
		// Recorded before sending, so that a fast reply finds its request.
		p.mu.Lock()
		p.reqs = append(p.reqs, &probeReq{tag: tag, sent: time.Now()})
		p.mu.Unlock()
		if err := p.c.WriteTo(pkt, ethernet.Broadcast); err != nil {
			p.setErr(fmt.Errorf("sending ARP request: %w", err))
			return
		}
		select {
		case <-p.stop:
			return
		case <-tick.C:
		}
	}
}

func (p *arpProbe) readLoop() {
	defer p.wg.Done()
	for {
		select {
		case <-p.stop:
			return
		default:
		}
		if err := p.c.SetReadDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
			p.setErr(err)
			return
		}
		pkt, _, err := p.c.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			p.setErr(fmt.Errorf("reading ARP: %w", err))
			return
		}
		now := time.Now()
		if pkt.Operation != arp.OperationReply || pkt.SenderIP != p.vip {
			continue
		}
		p.mu.Lock()
		if pkt.TargetIP == p.vip {
			// A gratuitous ARP reply: an announcement of the VIP.
			p.announcements = append(p.announcements, now)
			p.mu.Unlock()
			continue
		}
		if !p.isTag(pkt.TargetIP) {
			// An answer to the client kernel's own request (it resolves
			// the VIP for the test's connections): not ours to count.
			p.mu.Unlock()
			continue
		}
		var match *probeReq
		for i := len(p.reqs) - 1; i >= 0; i-- {
			if r := p.reqs[i]; r.tag == pkt.TargetIP && !r.sent.After(now) {
				match = r
				break
			}
		}
		if match == nil {
			p.stray = append(p.stray, fmt.Sprintf("%v is-at %v (to %v)", pkt.SenderIP, pkt.SenderHardwareAddr, pkt.TargetIP))
		} else {
			match.replies++
			match.macs = append(match.macs, pkt.SenderHardwareAddr.String())
		}
		p.mu.Unlock()
	}
}

func (p *arpProbe) isTag(a netip.Addr) bool {
	for _, t := range p.tags {
		if t == a {
			return true
		}
	}
	return false
}

// finish stops the probe after the replies to the last requests had time
// to arrive; later calls do nothing.
func (p *arpProbe) finish() {
	select {
	case <-p.stop:
		return
	default:
	}
	time.Sleep(200 * time.Millisecond)
	close(p.stop)
	p.wg.Wait()
	p.c.Close()
}

// check checks the whole probe: no request was ever answered twice, every
// answer carried the virtual MAC, nothing went unmatched, and no error
// stopped it.
func (p *arpProbe) check(vmac net.HardwareAddr) {
	p.t.Helper()
	p.finish()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		p.t.Errorf("ARP probe: %v", p.err)
	}
	var twice, wrongMAC []string
	for _, r := range p.reqs {
		if r.replies > 1 {
			twice = append(twice, fmt.Sprintf("request at %s from %v got %d replies", r.sent.Format("15:04:05.000"), r.tag, r.replies))
		}
		for _, m := range r.macs {
			if m != vmac.String() {
				wrongMAC = append(wrongMAC, m)
			}
		}
	}
	if len(twice) > 0 {
		p.t.Errorf("more than one node answered ARP for %v (%d of %d requests):\n%s", p.vip, len(twice), len(p.reqs), strings.Join(twice, "\n"))
	}
	if len(wrongMAC) > 0 {
		p.t.Errorf("ARP replies for %v with MACs %v, want only the virtual MAC %v", p.vip, wrongMAC, vmac)
	}
	if len(p.stray) > 0 {
		p.t.Errorf("ARP replies that match no request: %v", p.stray)
	}
	p.t.Logf("ARP probe: %d requests, %d announcements seen", len(p.reqs), len(p.announcements))
}

// expect checks that every request sent within [from, to] got exactly want
// replies, and that there were at least a few of them (the phase was
// actually observed).
func (p *arpProbe) expect(phase string, from, to time.Time, want int) {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	var bad []string
	for _, r := range p.reqs {
		if r.sent.Before(from) || r.sent.After(to) {
			continue
		}
		n++
		if r.replies != want {
			bad = append(bad, fmt.Sprintf("%s: %d replies", r.sent.Format("15:04:05.000"), r.replies))
		}
	}
	if minimum := int(to.Sub(from)/probeEvery) / 2; n < minimum || n == 0 {
		p.t.Errorf("%s: only %d ARP requests were sent in %v", phase, n, to.Sub(from).Round(time.Millisecond))
	}
	if len(bad) > 0 {
		if len(bad) > 10 {
			bad = append(bad[:10], fmt.Sprintf("... and %d more", len(bad)-10))
		}
		p.t.Errorf("%s: %d of %d ARP requests for %v did not get exactly %d replies:\n%s",
			phase, len(bad), n, p.vip, want, strings.Join(bad, "\n"))
	} else {
		p.t.Logf("%s: %d ARP requests, each answered %d times", phase, n, want)
	}
}

// announcedWithin reports whether a gratuitous ARP for the VIP arrived
// within [from, to].
func (p *arpProbe) announcedWithin(from, to time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, a := range p.announcements {
		if !a.Before(from) && !a.After(to) {
			return true
		}
	}
	return false
}
