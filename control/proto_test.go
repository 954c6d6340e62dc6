package control

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestDecodeRequest(t *testing.T) {
	m := netip.MustParseAddr("192.0.2.12")
	tests := []struct {
		in   string
		want command
	}{
		{`{"cmd":"status"}`, command{cmd: cmdStatus}},
		{` {"cmd":"reload"} ` + "\r", command{cmd: cmdReload}},
		{`{"cmd":"conns"}`, command{cmd: cmdConns}},
		{`{"cmd":"conns","vip":"192.0.2.10","member":"::ffff:192.0.2.12"}`, command{cmd: cmdConns, vip: netip.MustParseAddr("192.0.2.10"), member: m}},
		{`{"cmd":"weight","member":"192.0.2.12","weight":0}`, command{cmd: cmdWeight, member: m}},
		{`{"cmd":"weight","member":"192.0.2.12","weight":4294967295}`, command{cmd: cmdWeight, member: m, weight: 1<<32 - 1}},
		{`{"cmd":"weight","member":"fe80::1%eth0","weight":3}`, command{cmd: cmdWeight, member: netip.MustParseAddr("fe80::1"), weight: 3}},
	}
	for _, tt := range tests {
		got, err := decodeRequest([]byte(tt.in))
		if err != nil || got != tt.want {
			t.Errorf("decodeRequest(%s) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{`[]`, `{"cmd":1}`, `{"cmd":"status"`, `{"cmd":"conns","weight":1}`,
		`{"cmd":"weight","vip":"192.0.2.10","member":"192.0.2.12","weight":1}`, `{"cmd":"weight","weight":1}`,
		`{"cmd":"weight","member":"192.0.2.12","weight":1.5}`, `{"cmd":"conns","vip":"192.0.2.0/24"}`, `null`} {
		if c, err := decodeRequest([]byte(bad)); !errors.Is(err, ErrBadRequest) {
			t.Errorf("decodeRequest(%s) = %+v, %v; want ErrBadRequest", bad, c, err)
		}
	}
	if _, err := decodeRequest([]byte(`{"cmd":"STATUS"}`)); !errors.Is(err, ErrUnknownCommand) {
		t.Errorf("upper-case command: %v, want ErrUnknownCommand", err)
	}
	long := `{"cmd":"status"}` + strings.Repeat(" ", MaxRequestSize)
	if _, err := decodeRequest([]byte(long)); !errors.Is(err, ErrRequestTooLarge) {
		t.Errorf("oversized request: %v, want ErrRequestTooLarge", err)
	}
}

// FuzzDecodeRequest checks that no input crashes the decoder, that it accepts only valid commands,
// and that every accepted command survives the client's encoding unchanged.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{`{"cmd":"status"}`, `{"cmd":"reload"}`, `{"cmd":"conns","vip":"192.0.2.10"}`,
		`{"cmd":"conns","member":"2001:db8::1"}`, `{"cmd":"weight","member":"192.0.2.12","weight":0}`,
		`{"cmd":"weight","member":"192.0.2.12","weight":-1}`, `{"cmd":"x"}`, `{`, "", `{"cmd":"status"}{}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeRequest(b)
		if err != nil {
			if c != (command{}) {
				t.Fatalf("error %v with a non-empty command %+v", err, c)
			}
			if !errors.Is(err, ErrBadRequest) && !errors.Is(err, ErrUnknownCommand) && !errors.Is(err, ErrRequestTooLarge) {
				t.Fatalf("error %v is none of the protocol's errors", err)
			}
			return
		}
		if len(b) > MaxRequestSize {
			t.Fatalf("accepted %d bytes, more than MaxRequestSize", len(b))
		}
		r := request{Cmd: c.cmd}
		switch c.cmd {
		case cmdStatus, cmdReload:
			if c.vip.IsValid() || c.member.IsValid() || c.weight != 0 {
				t.Fatalf("%s with arguments: %+v", c.cmd, c)
			}
		case cmdConns:
			if c.vip.IsValid() {
				r.VIP = c.vip.String()
			}
			if c.member.IsValid() {
				r.Member = c.member.String()
			}
		case cmdWeight:
			if !c.member.IsValid() {
				t.Fatalf("weight without a member: %+v", c)
			}
			r.Member, r.Weight = c.member.String(), &c.weight
		default:
			t.Fatalf("accepted unknown command %q", c.cmd)
		}
		again, err := decodeRequest(r.encode())
		if err != nil || again != c {
			t.Fatalf("re-encoded %+v decodes to %+v, %v", c, again, err)
		}
	})
}
