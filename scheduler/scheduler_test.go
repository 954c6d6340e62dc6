package scheduler

import (
	"errors"
	"testing"
)

func TestParseKind(t *testing.T) {
	for in, want := range map[string]Kind{"": KindMaglev, "maglev": KindMaglev, " WRR ": KindWRR, "Wlc": KindWLC} {
		if got, err := ParseKind(in); err != nil || got != want {
			t.Errorf("ParseKind(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"rr", "lc", "maglev2", "sh"} {
		if _, err := ParseKind(in); !errors.Is(err, ErrUnknownKind) {
			t.Errorf("ParseKind(%q) err = %v, want ErrUnknownKind", in, err)
		}
	}
}

func TestNew(t *testing.T) {
	ms := []Member{{ID: 1, Key: "192.0.2.1", Weight: 2}, {ID: 2, Key: "192.0.2.2", Weight: 1}}
	active := func(uint32) int64 { return 0 }
	for _, k := range []Kind{"", KindMaglev, KindWRR, KindWLC} {
		s, err := New(k, ms, active)
		if err != nil {
			t.Fatalf("New(%q): %v", k, err)
		}
		want := string(k)
		if k == "" {
			want = "maglev"
		}
		if s.Name() != want {
			t.Errorf("New(%q).Name() = %q", k, s.Name())
		}
		if id, ok := s.Pick(0x1234); !ok || (id != 1 && id != 2) {
			t.Errorf("New(%q).Pick = %d, %v", k, id, ok)
		}
	}
	if mg, _ := New("", ms, nil); len(mg.(*Maglev).Table()) != DefaultTableSize {
		t.Error("default Maglev does not use DefaultTableSize")
	}
	for _, tc := range []struct {
		k       Kind
		members []Member
		active  func(uint32) int64
		want    error
	}{
		{"rr", ms, active, ErrUnknownKind},
		{KindWLC, ms, nil, ErrNoActiveFunc},
		{KindWRR, append(ms, Member{ID: 1, Key: "192.0.2.9"}), nil, ErrDuplicateID},
		{KindWLC, append(ms, Member{ID: 3, Key: "192.0.2.1"}), active, ErrDuplicateKey},
		{KindMaglev, append(ms, Member{ID: 3}), nil, ErrBadMember},
	} {
		if _, err := New(tc.k, tc.members, tc.active); !errors.Is(err, tc.want) {
			t.Errorf("New(%q, %v): err = %v, want %v", tc.k, tc.members, err, tc.want)
		}
	}
	for _, k := range []Kind{KindMaglev, KindWRR, KindWLC} {
		s, err := New(k, nil, active)
		if err != nil {
			t.Fatalf("New(%q, nil): %v", k, err)
		}
		if _, ok := s.Pick(1); ok {
			t.Errorf("New(%q, no members).Pick ok", k)
		}
	}
}
