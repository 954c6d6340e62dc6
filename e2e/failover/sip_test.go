package failover

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/l2lb/l2lb/internal/testbed"
)

// sipPort is the SIP port with Call-ID affinity in the services file.
const sipPort = 5060

// TestSIPCallIDAffinity is issue 13's SIP affinity acceptance on the standalone cluster: with
// `affinity call-id` on 5060/udp, every request of one Call-ID reaches one frontend, from
// several source ports and client addresses, a 3000-byte INVITE the clients' kernels fragment
// included, and still after a planned failover of the active node.
func TestSIPCallIDAffinity(t *testing.T) {
	bed := newBed(t)
	vip := bed.VIPs[0]
	for _, f := range bed.Frontends {
		serveSIPName(t, f, netip.AddrPortFrom(vip, sipPort))
	}
	svc := filepath.Join(t.TempDir(), "services")
	if err := os.WriteFile(svc, []byte("service sip 5060/udp\n    affinity call-id\n    idle-timeout 2h\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cl := startCluster(t, bed, "--services", svc)

	// Each Call-ID is sent from several sockets: two source ports on each client address.
	type sender struct {
		c  *net.UDPConn
		at string
	}
	var senders []sender
	for _, c := range bed.Clients {
		for _, a := range append([]netip.Addr{c.Addr}, c.Extra...) {
			for i := 0; i < 2; i++ {
				uc, err := c.ListenUDP(netip.AddrPortFrom(a, 0))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { uc.Close() })
				senders = append(senders, sender{uc, uc.LocalAddr().String()})
			}
		}
	}
	raddr := netip.AddrPortFrom(vip, sipPort)
	ask := func(s sender, callID string, size int) (string, error) {
		msg := sipRequest(callID, size)
		if _, err := s.c.WriteToUDPAddrPort(msg, raddr); err != nil {
			return "", err
		}
		buf := make([]byte, 256)
		s.c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, _, err := s.c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return "", err
		}
		name, got, _ := strings.Cut(string(buf[:n]), " ")
		if got != fmt.Sprint(len(msg)) {
			return "", fmt.Errorf("%s received %s bytes of %d", name, got, len(msg))
		}
		return name, nil
	}
	// round sends every Call-ID from every sender (the first with a 3000-byte INVITE) and
	// returns the frontend of each Call-ID, failing on a Call-ID answered by two.
	round := func(what string, ids []string) map[string]string {
		t.Helper()
		owner := map[string]string{}
		for _, id := range ids {
			for i, s := range senders {
				size := 400
				if i == 0 {
					size = 3000
				}
				name, err := ask(s, id, size)
				if err != nil {
					t.Fatalf("%s: Call-ID %s from %s: %v", what, id, s.at, err)
				}
				if prev, ok := owner[id]; ok && prev != name {
					t.Errorf("%s: Call-ID %s reached %s from %s, %s before", what, id, name, s.at, prev)
				}
				owner[id] = name
			}
		}
		return owner
	}
	var ids []string
	for i := 0; i < 30; i++ {
		ids = append(ids, fmt.Sprintf("a84b4c76e66710-%d@client.example.com", i))
	}
	before := round("f1 active", ids)
	per := map[string]int{}
	for _, n := range before {
		per[n]++
	}
	t.Logf("f1 active: %d Call-IDs from %d sockets each, per frontend %v", len(ids), len(senders), per)
	if len(per) < 2 {
		t.Errorf("30 Call-IDs all reached one frontend (%v): the dialogs are not spread", per)
	}

	// A planned failover: SIGTERM to the active f1. f1's services stay up, so its dialogs stay
	// with it (it is leaving); the others keep theirs through the new active node.
	f1 := cl.node("f1")
	t0 := f1.signal(syscall.SIGTERM)
	succ, _, ok := cl.waitRoleActive(t0, handoverLimit, "f1")
	if !ok {
		t.Fatalf("no node took the active role within %v of SIGTERM to f1", handoverLimit)
	}
	f1.waitExit(10 * time.Second)
	after := round(succ.host.Name+" active", ids)
	moved := 0
	for id, n := range after {
		if before[id] != n {
			moved++
			t.Errorf("Call-ID %s reached %s before the failover and %s after", id, before[id], n)
		}
	}
	t.Logf("after the failover to %s: %d of %d Call-IDs kept their frontend", succ.host.Name, len(ids)-moved, len(ids))
	// New dialogs avoid the node that left.
	var fresh []string
	for i := 0; i < 20; i++ {
		fresh = append(fresh, fmt.Sprintf("new-%d@client.example.com", i))
	}
	for id, n := range round("new dialogs after the failover", fresh) {
		if n == "f1" {
			t.Errorf("new dialog %s reached f1, which left", id)
		}
	}
}

// sipRequest is a SIP request of about size bytes (RFC 3261 §7: the Call-ID header after the
// Via, padded with a long Subject so the message can exceed one Ethernet frame).
func sipRequest(callID string, size int) []byte {
	head := "INVITE sip:bob@example.com SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP client.example.com:5060;branch=z9hG4bK776asdhds\r\n" +
		"Max-Forwards: 70\r\nTo: Bob <sip:bob@example.com>\r\n" +
		"From: Alice <sip:alice@example.com>;tag=1928301774\r\n" +
		"Call-ID: " + callID + "\r\nCSeq: 314159 INVITE\r\nContact: <sip:alice@client.example.com>\r\n"
	pad := max(size-len(head)-len("Subject: \r\nContent-Length: 0\r\n\r\n"), 0)
	return []byte(head + "Subject: " + strings.Repeat("x", pad) + "\r\nContent-Length: 0\r\n\r\n")
}

// serveSIPName answers every datagram to addr on f with f's name and the datagram's length.
func serveSIPName(t *testing.T, f *testbed.Host, addr netip.AddrPort) {
	t.Helper()
	uc, err := f.ListenUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { uc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := uc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			uc.WriteToUDPAddrPort([]byte(fmt.Sprintf("%s %d", f.Name, n)), from)
		}
	}()
}
