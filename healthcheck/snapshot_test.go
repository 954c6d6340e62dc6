package healthcheck

import (
	"bytes"
	"errors"
	"net/netip"
	"reflect"
	"testing"
)

func sampleSnapshot() Snapshot {
	return Snapshot{Targets: []TargetHealth{
		{Addr: netip.MustParseAddr("192.0.2.11"), Healthy: true, Services: []ServiceHealth{
			{Port: 25, Proto: "tcp", Healthy: true}, {Port: 5060, Proto: "udp", Healthy: true}}},
		{Addr: netip.MustParseAddr("2001:db8::12"), Healthy: false, Services: []ServiceHealth{
			{Port: 25, Proto: "tcp", Healthy: false}, {Port: 5060, Proto: "udp", Healthy: true}}},
		{Addr: netip.MustParseAddr("192.0.2.13"), Healthy: true, Services: []ServiceHealth{}},
	}}
}

func TestSnapshotRoundTrip(t *testing.T) {
	s := sampleSnapshot()
	b, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	// 3 header + (1+4+1+2+6) + (1+16+1+2+6) + (1+4+1+2)
	if len(b) != 3+14+26+8 {
		t.Errorf("encoded %d bytes", len(b))
	}
	var got Snapshot
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, s) {
		t.Fatalf("got %+v, want %+v", got, s)
	}
	var empty Snapshot
	b, _ = empty.MarshalBinary()
	if err := got.UnmarshalBinary(b); err != nil || len(got.Targets) != 0 {
		t.Fatalf("empty: %v %+v", err, got)
	}
}

func TestSnapshotMalformed(t *testing.T) {
	good, _ := sampleSnapshot().MarshalBinary()
	v4 := []byte{1, 0, 1, 4, 192, 0, 2, 1, 1, 0, 1}
	cases := map[string][]byte{
		"empty":          {},
		"version":        append([]byte{2}, good[1:]...),
		"truncated":      good[:len(good)-1],
		"trailing":       append(append([]byte{}, good...), 0),
		"count too big":  {1, 0xff, 0xff},
		"count vs bytes": {1, 0, 9, 4, 1, 2, 3, 4, 0, 0, 0},
		"family":         {1, 0, 1, 5, 1, 2, 3, 4, 0, 0, 0},
		"target flags":   {1, 0, 1, 4, 1, 2, 3, 4, 2, 0, 0},
		"service port 0": append(append([]byte{}, v4...), 0, 0, 1),
		"service flags":  append(append([]byte{}, v4...), 0, 25, 4),
		"dup service":    {1, 0, 1, 4, 192, 0, 2, 1, 1, 0, 2, 0, 25, 1, 0, 25, 0},
		"dup target":     {1, 0, 2, 4, 1, 2, 3, 4, 0, 0, 0, 4, 1, 2, 3, 4, 0, 0, 0},
	}
	for name, in := range cases {
		s := sampleSnapshot()
		if err := s.UnmarshalBinary(in); !errors.Is(err, ErrSnapshot) {
			t.Errorf("%s: %v, want ErrSnapshot", name, err)
		}
		if !reflect.DeepEqual(s, sampleSnapshot()) {
			t.Errorf("%s: failed decode changed the snapshot", name)
		}
	}
	bad := Snapshot{Targets: []TargetHealth{{Addr: netip.Addr{}}}}
	if _, err := bad.MarshalBinary(); !errors.Is(err, ErrSnapshot) {
		t.Errorf("invalid address: %v", err)
	}
	bad = Snapshot{Targets: []TargetHealth{{Addr: netip.MustParseAddr("192.0.2.1"), Services: []ServiceHealth{{Port: 1, Proto: "sctp"}}}}}
	if _, err := bad.MarshalBinary(); !errors.Is(err, ErrSnapshot) {
		t.Errorf("bad proto: %v", err)
	}
}

func FuzzSnapshotUnmarshal(f *testing.F) {
	good, _ := sampleSnapshot().MarshalBinary()
	f.Add(good)
	f.Add([]byte{1, 0, 0})
	f.Add([]byte{1, 0, 1, 6})
	f.Fuzz(func(t *testing.T, in []byte) {
		var s Snapshot
		if err := s.UnmarshalBinary(in); err != nil {
			if !errors.Is(err, ErrSnapshot) {
				t.Fatalf("error does not wrap ErrSnapshot: %v", err)
			}
			return
		}
		// Whatever decodes re-encodes to the same bytes.
		out, err := s.MarshalBinary()
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		if !bytes.Equal(out, in) {
			t.Fatalf("re-encoded %x, input %x", out, in)
		}
	})
}

func BenchmarkSnapshotAppend(b *testing.B) {
	s := benchSnapshot()
	buf := make([]byte, 0, 4096)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = s.AppendBinary(buf[:0]); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkSnapshotUnmarshal(b *testing.B) {
	in, _ := benchSnapshot().MarshalBinary()
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		var s Snapshot
		if err := s.UnmarshalBinary(in); err != nil {
			b.Fatal(err)
		}
	}
}

// benchSnapshot is a 32-frontend cluster with ten checks each.
func benchSnapshot() Snapshot {
	var s Snapshot
	for i := range 32 {
		th := TargetHealth{Addr: netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)}), Healthy: true}
		for p := range 10 {
			th.Services = append(th.Services, ServiceHealth{Port: uint16(1000 + p), Proto: "tcp", Healthy: true})
		}
		s.Targets = append(s.Targets, th)
	}
	return s
}
