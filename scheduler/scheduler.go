// Package scheduler picks the frontend that receives a new flow.
//
// Three policies are offered: Maglev consistent hashing (the default, so that
// every balancer in a group maps a flow to the same frontend without sharing
// state, and a membership change moves few flows), weighted round-robin and
// weighted least-connection with the semantics of the Linux IPVS "wrr" and
// "wlc" schedulers that l2lb replaces.
//
// Every scheduler orders its members by Key before use, so the result never
// depends on the order of the slice the caller passes in.
package scheduler

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Member is one frontend that can receive flows.
type Member struct {
	// ID is the caller's small index for the frontend, at most
	// MaxMemberID; it is what Pick returns.
	ID uint32
	// Key is a stable name for the frontend (its real IPv4 address as text).
	// Maglev hashes it, so two balancers given the same members build the
	// same table without talking to each other.
	Key string
	// Weight is the frontend's relative capacity. Zero means quiescent: the
	// frontend keeps the flows it has but is given no new ones.
	Weight uint32
}

// Scheduler picks a member for a new flow.
type Scheduler interface {
	// Pick returns the member for a new flow whose hash is h. It does not
	// allocate and is safe for concurrent use. ok is false when no member
	// has a weight above zero.
	Pick(h uint64) (id uint32, ok bool)
	// Name returns the scheduler's Kind as text.
	Name() string
}

// Kind names a scheduling policy.
type Kind string

// The scheduling policies New understands.
const (
	// KindMaglev is Maglev consistent hashing; it is the default.
	KindMaglev Kind = "maglev"
	// KindWRR is weighted round-robin, as IPVS "wrr".
	KindWRR Kind = "wrr"
	// KindWLC is weighted least-connection, as IPVS "wlc".
	KindWLC Kind = "wlc"
)

// MaxMemberID is the largest Member.ID accepted by New and NewMaglev: by
// contract IDs are small dense indexes below 65536, and rejecting larger ones
// catches a caller passing something else (an address, a hash) by mistake.
const MaxMemberID = 1<<16 - 1

var (
	// ErrUnknownKind is returned for a scheduler name that is not maglev,
	// wrr or wlc.
	ErrUnknownKind = errors.New("scheduler: unknown scheduler kind")
	// ErrNotPrime is returned when a Maglev table size is not a prime
	// number, which the permutation needs to visit every slot.
	ErrNotPrime = errors.New("scheduler: maglev table size is not prime")
	// ErrTableTooLarge is returned when a Maglev table size exceeds
	// MaxTableSize.
	ErrTableTooLarge = errors.New("scheduler: maglev table size too large")
	// ErrDuplicateKey is returned when two members share a Key, which would
	// give them identical Maglev permutations.
	ErrDuplicateKey = errors.New("scheduler: duplicate member key")
	// ErrDuplicateID is returned when two members share an ID, which would
	// make Pick's answer ambiguous.
	ErrDuplicateID = errors.New("scheduler: duplicate member id")
	// ErrBadMember is returned for a member with an empty Key or an ID
	// above MaxMemberID.
	ErrBadMember = errors.New("scheduler: invalid member")
	// ErrNoActiveFunc is returned when a wlc scheduler is requested without
	// a function reporting live flows per member.
	ErrNoActiveFunc = errors.New("scheduler: wlc needs an active-flow counter")
)

// ParseKind converts a scheduler name, case-insensitively, to a Kind. The
// empty string selects the default, KindMaglev.
func ParseKind(s string) (Kind, error) {
	switch k := Kind(strings.ToLower(strings.TrimSpace(s))); k {
	case "":
		return KindMaglev, nil
	case KindMaglev, KindWRR, KindWLC:
		return k, nil
	default:
		return "", fmt.Errorf("%w: %q", ErrUnknownKind, s)
	}
}

// New validates members and builds a scheduler of kind k ("" means
// KindMaglev, with DefaultTableSize slots). active reports the live flows of
// a member; only wlc uses it, and it must then be non-nil and safe for
// concurrent use.
func New(k Kind, members []Member, active func(id uint32) int64) (Scheduler, error) {
	if err := validate(members); err != nil {
		return nil, err
	}
	switch k {
	case "", KindMaglev:
		return NewMaglev(members, DefaultTableSize)
	case KindWRR:
		return NewWRR(members), nil
	case KindWLC:
		if active == nil {
			return nil, ErrNoActiveFunc
		}
		return NewWLC(members, active), nil
	default:
		return nil, fmt.Errorf("%w: %q", ErrUnknownKind, string(k))
	}
}

// validate rejects member sets whose schedule would be ambiguous.
func validate(members []Member) error {
	keys := make(map[string]struct{}, len(members))
	ids := make(map[uint32]struct{}, len(members))
	for _, m := range members {
		if m.Key == "" || m.ID > MaxMemberID {
			return fmt.Errorf("%w: id %d key %q", ErrBadMember, m.ID, m.Key)
		}
		if _, dup := keys[m.Key]; dup {
			return fmt.Errorf("%w: %q", ErrDuplicateKey, m.Key)
		}
		if _, dup := ids[m.ID]; dup {
			return fmt.Errorf("%w: %d", ErrDuplicateID, m.ID)
		}
		keys[m.Key] = struct{}{}
		ids[m.ID] = struct{}{}
	}
	return nil
}

// weighted returns the members with a weight above zero, in a canonical
// order: by Key, then ID and Weight so that even invalid duplicates have a
// deterministic place. The caller's slice is not modified.
func weighted(members []Member) []Member {
	out := make([]Member, 0, len(members))
	for _, m := range members {
		if m.Weight > 0 {
			out = append(out, m)
		}
	}
	slices.SortFunc(out, func(a, b Member) int {
		return cmp.Or(strings.Compare(a.Key, b.Key), cmp.Compare(a.ID, b.ID), cmp.Compare(a.Weight, b.Weight))
	})
	return out
}
