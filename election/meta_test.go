package election

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"testing"
)

func sampleMeta() NodeMeta {
	return NodeMeta{
		Addr:       netip.MustParseAddr("192.0.2.10"),
		MAC:        net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0a},
		PortLo:     50000,
		PortHi:     54000,
		Weight:     100,
		Priority:   7,
		Healthy:    true,
		Capable:    true,
		TableReady: true,
		Active: []netip.Addr{
			netip.MustParseAddr("198.51.100.3"),
			netip.MustParseAddr("198.51.100.1"),
			netip.MustParseAddr("198.51.100.2"),
			netip.MustParseAddr("198.51.100.2"),
			netip.MustParseAddr("198.51.100.9"),
		},
	}
}

func TestMetaRoundTrip(t *testing.T) {
	m := sampleMeta()
	b, err := EncodeMeta(m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeMeta(b)
	if err != nil {
		t.Fatal(err)
	}
	want := m
	want.Active = sortedVIPs(m.Active)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
	}
	// Flags one by one, so a swapped bit cannot hide behind all-true.
	for _, f := range []func(*NodeMeta){
		func(m *NodeMeta) { m.Healthy = false },
		func(m *NodeMeta) { m.Capable = false },
		func(m *NodeMeta) { m.TableReady = false },
		func(m *NodeMeta) { m.Draining = true },
	} {
		m2 := want
		f(&m2)
		b, _ := EncodeMeta(m2)
		got, err := DecodeMeta(b)
		if err != nil || !reflect.DeepEqual(got, m2) {
			t.Fatalf("flags: got %+v, %v; want %+v", got, err, m2)
		}
	}
}

func TestMetaCompactRuns(t *testing.T) {
	// A whole /24 of VIPs is one run: the encoding stays tiny.
	var vips []netip.Addr
	a := netip.MustParseAddr("198.51.100.0")
	for range 256 {
		vips = append(vips, a)
		a = a.Next()
	}
	m := NodeMeta{Active: vips, Addr: netip.MustParseAddr("192.0.2.1")}
	b, err := EncodeMeta(m)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 32 {
		t.Fatalf("a /24 takes %d bytes", len(b))
	}
	got, err := DecodeMeta(b)
	if err != nil || !reflect.DeepEqual(got.Active, vips) {
		t.Fatalf("got %d VIPs, %v", len(got.Active), err)
	}
}

func TestMetaErrors(t *testing.T) {
	m := sampleMeta()
	m.PortLo, m.PortHi = 2, 1
	if _, err := EncodeMeta(m); !errors.Is(err, ErrMetaInvalid) {
		t.Errorf("reversed ports: %v", err)
	}
	m = sampleMeta()
	m.Active = append(m.Active, netip.MustParseAddr("::ffff:192.0.2.1"), netip.Addr{})
	if _, err := EncodeMeta(m); !errors.Is(err, ErrNotIPv4) {
		t.Errorf("zero VIP: %v", err)
	}
	// Scattered VIPs cost 5 bytes each: 200 of them exceed 512 bytes.
	m = sampleMeta()
	m.Active = nil
	for i := range 200 {
		m.Active = append(m.Active, netip.AddrFrom4([4]byte{198, 51, byte(i), 1}))
	}
	if _, err := EncodeMeta(m); !errors.Is(err, ErrMetaTooLarge) {
		t.Errorf("too many runs: %v", err)
	}

	good, _ := EncodeMeta(sampleMeta())
	for i := range good {
		if _, err := DecodeMeta(good[:i]); !errors.Is(err, ErrMetaTruncated) {
			t.Errorf("truncated at %d: %v", i, err)
		}
	}
	bad := append([]byte{2}, good[1:]...)
	if _, err := DecodeMeta(bad); !errors.Is(err, ErrMetaVersion) {
		t.Errorf("version 2: %v", err)
	}
	// A run reaching past 255.255.255.255.
	wrap := []byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 255, 255, 255, 250, 10}
	if _, err := DecodeMeta(wrap); !errors.Is(err, ErrMetaInvalid) {
		t.Errorf("wrapping run: %v", err)
	}
	// A single run claiming four billion VIPs must not be expanded.
	huge := []byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0e}
	if _, err := DecodeMeta(huge); !errors.Is(err, ErrMetaInvalid) {
		t.Errorf("huge run: %v", err)
	}
	// Trailing bytes are later minor-version fields: accepted, ignored.
	if got, err := DecodeMeta(append(good, 0xde, 0xad)); err != nil || got.Weight != 100 {
		t.Errorf("trailing bytes: %+v, %v", got, err)
	}
}

func FuzzDecodeMeta(f *testing.F) {
	good, _ := EncodeMeta(sampleMeta())
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 10, 0, 0, 0, 3, 10, 0, 0, 2, 5})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMeta(b)
		if err != nil {
			return
		}
		enc, err := EncodeMeta(m)
		if err != nil {
			t.Fatalf("decoded %+v does not re-encode: %v", m, err)
		}
		m2, err := DecodeMeta(enc)
		if err != nil {
			t.Fatalf("re-encoded meta does not decode: %v", err)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("round trip changed meta:\n%+v\n%+v", m, m2)
		}
	})
}

// TestMetaIPv6VIPs: IPv6 VIPs travel in a tagged field after the first revision's fields, so
// metadata with them round-trips, and a decoder of the first revision, which ignores trailing
// bytes, still reads the rest.
func TestMetaIPv6VIPs(t *testing.T) {
	m := sampleMeta()
	v6 := []netip.Addr{netip.MustParseAddr("2001:db8::201"), netip.MustParseAddr("2001:db8::200")}
	m.Active = append(m.Active, v6...)
	b, err := EncodeMeta(m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeMeta(b)
	if err != nil {
		t.Fatal(err)
	}
	want := append(slices.Clone(sampleMeta().Active), v6[1], v6[0])
	slices.SortFunc(want, netip.Addr.Compare)
	want = slices.Compact(want) // sampleMeta lists one VIP twice
	if !slices.Equal(got.Active, want) {
		t.Fatalf("Active %v, want %v", got.Active, want)
	}
	v4only, _ := EncodeMeta(sampleMeta())
	if !bytes.HasPrefix(b, v4only) || b[len(v4only)] != tagIPv6VIPs {
		t.Fatal("the IPv6 VIPs are not a tagged field after the IPv4-only encoding")
	}
	for i := len(v4only) + 1; i < len(b); i++ {
		if _, err := DecodeMeta(b[:i]); err == nil {
			t.Fatalf("IPv6 field cut at %d bytes decoded without error", i)
		}
	}
}
