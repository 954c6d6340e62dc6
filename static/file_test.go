package static

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/l2lb/l2lb/dataplane"
	"github.com/l2lb/l2lb/vipset"
)

func TestParseMembersFile(t *testing.T) {
	self := netip.MustParseAddr("192.0.2.11")
	vips := vipset.New(netip.MustParseAddr("192.0.2.200"))
	in := `# frontends of the mail cluster
192.0.2.11            # this node: weight -r
192.0.2.12=50 61000-65000
2001:db8::13

`
	ms, err := ParseMembersFile(strings.NewReader(in), "members", 70, map[netip.Addr]bool{self: true}, vips)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 3 || !ms[0].Local || ms[0].Weight != 70 || ms[1].Weight != 50 ||
		ms[1].Ports != (dataplane.PortRange{Lo: 61000, Hi: 65000}) || ms[2].Addr != netip.MustParseAddr("2001:db8::13") || ms[2].Weight != 100 {
		t.Fatalf("members %+v", ms)
	}
	for _, c := range []struct{ in, want string }{
		{"192.0.2.12\n192.0.2.300\n", "members:2:"},
		{"192.0.2.12\n\n192.0.2.12=5\n", "members:3: 192.0.2.12 is listed on line 1 too"},
		{"192.0.2.12 1-2 3\n", "members:1: want ADDR[=WEIGHT] [LO-HI]"},
		{"192.0.2.12 9-1\n", "members:1:"},
		{"192.0.2.200\n", "members:1:"},
		{strings.Repeat("x", 2000) + "\n", "members:1: line longer"},
	} {
		_, err := ParseMembersFile(strings.NewReader(c.in), "members", 100, nil, vips)
		if err == nil || !errors.Is(err, ErrMember) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: err %v, want ErrMember with %q", c.in, err, c.want)
		}
	}
}
