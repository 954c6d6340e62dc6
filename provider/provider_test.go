package provider

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/l2lb/l2lb/conntrack"
	"github.com/l2lb/l2lb/control"
	"github.com/l2lb/l2lb/dataplane"
	"github.com/l2lb/l2lb/vipset"
)

var (
	vip = netip.MustParseAddr("192.0.2.200")
	f1  = netip.MustParseAddr("192.0.2.11")
	f2  = netip.MustParseAddr("192.0.2.12")
)

func newSource(t *testing.T) *Source {
	t.Helper()
	eng := dataplane.New(conntrack.Config{MaxEntries: 1000})
	if err := eng.SetMAC(f2, net.HardwareAddr{2, 0, 0, 0, 0, 0x12}); err != nil {
		t.Fatal(err)
	}
	if err := eng.Configure(dataplane.Config{VirtualMAC: net.HardwareAddr{2, 0x6c, 0x32, 0x62, 0, 0},
		InterfaceMAC: net.HardwareAddr{2, 0, 0, 0, 0, 0x11}, VIPs: vipset.New(vip),
		Members: []dataplane.Member{{Addr: f1, Weight: 100, Local: true}, {Addr: f2, Weight: 100}}}); err != nil {
		t.Fatal(err)
	}
	// A Node on lo opens no socket until Run; it is only the counters' owner here.
	node, err := dataplane.NewNode(dataplane.NodeConfig{Interface: "lo", Engine: eng})
	if err != nil {
		t.Fatalf("no loopback interface: %v", err)
	}
	return &Source{Mode: control.ModeRun, NodeName: "n1", Interface: "eth0", Engine: eng, Node: node, Limit: 1000}
}

func TestStatusConnsWeight(t *testing.T) {
	s := newSource(t)
	eng := s.Engine
	now := eng.Tick()
	id1, _ := eng.MemberID(f1)
	id2, _ := eng.MemberID(f2)
	for i := uint16(0); i < 5; i++ {
		if err := eng.Table().Insert(conntrack.Key{Src: 0xc6336401, Dst: 0xc00002c8, SPort: 1000 + i, DPort: 25, Proto: 6}, id1, 0x02, now); err != nil {
			t.Fatal(err)
		}
	}
	for i := uint16(0); i < 3; i++ {
		if err := eng.Table().Insert(conntrack.Key{Src: 0xc6336402, Dst: 0xc00002c8, SPort: 2000 + i, DPort: 143, Proto: 6}, id2, 0x10, now); err != nil {
			t.Fatal(err)
		}
	}
	p := New(s)
	st := p.Status()
	if st.Role != control.RoleStandby || st.Mode != control.ModeRun || len(st.VIPs) != 1 || st.VIPs[0] != vip.String() {
		t.Fatalf("status header %+v", st)
	}
	if st.Table.Flows != 8 || st.Table.Limit != 1000 {
		t.Fatalf("table %+v", st.Table)
	}
	got := map[string]int64{}
	for _, m := range st.Members {
		got[m.Addr] = m.Flows
	}
	if got[f1.String()] != 5 || got[f2.String()] != 3 {
		t.Fatalf("member flows %v", got)
	}
	if cs := p.Conns(netip.Addr{}, f2); len(cs) != 3 || cs[0].Member != f2.String() || cs[0].Proto != "TCP" || cs[0].State != "ESTABLISHED" {
		t.Fatalf("conns of f2: %+v", cs)
	}
	if cs := p.Conns(vip, netip.Addr{}); len(cs) != 8 {
		t.Fatalf("conns of the VIP: %d", len(cs))
	}
	if cs := p.Conns(netip.MustParseAddr("192.0.2.201"), netip.Addr{}); len(cs) != 0 {
		t.Fatalf("conns of another VIP: %d", len(cs))
	}
	if err := p.SetWeight(f2, 0); err != nil {
		t.Fatal(err)
	}
	for _, m := range p.Status().Members {
		if m.Addr == f2.String() && (m.Weight != 0 || m.Flows != 3) {
			t.Fatalf("quiesced member %+v: weight 0 and its flows kept expected", m)
		}
	}
	if err := p.SetWeight(netip.MustParseAddr("192.0.2.99"), 1); !errors.Is(err, control.ErrUnknownMember) {
		t.Fatalf("unknown member: %v", err)
	}
	if err := p.Reload(); err == nil {
		t.Fatal("reload without a Reload func must say it is unsupported")
	}
	_ = id2
}
