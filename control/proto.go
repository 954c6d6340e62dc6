package control

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// MaxRequestSize bounds one request on the control socket. The largest legitimate request, a
// weight change with two addresses, is under 200 bytes; the bound keeps a misbehaving client from
// making the balancer buffer without limit.
const MaxRequestSize = 4096

// Errors of the control protocol.
var (
	// ErrBadRequest means a request was not a single well-formed JSON object with valid fields.
	ErrBadRequest = errors.New("control: bad request")
	// ErrUnknownCommand means the request named a command the server does not know.
	ErrUnknownCommand = errors.New("control: unknown command")
	// ErrRequestTooLarge means a request exceeded MaxRequestSize.
	ErrRequestTooLarge = errors.New("control: request too large")
)

// Commands of the control protocol, the "cmd" field of a request.
const (
	cmdStatus = "status"
	cmdConns  = "conns"
	cmdWeight = "weight"
	cmdReload = "reload"
)

// request is the wire form of one command: a JSON object on one line, e.g.
// {"cmd":"weight","member":"192.0.2.12","weight":0}.
type request struct {
	Cmd    string  `json:"cmd"`
	VIP    string  `json:"vip,omitempty"`
	Member string  `json:"member,omitempty"`
	Weight *uint32 `json:"weight,omitempty"`
}

// response is the wire form of an answer: {"ok":true,...} or {"error":"..."}.
type response struct {
	OK     bool    `json:"ok,omitempty"`
	Error  string  `json:"error,omitempty"`
	Status *Status `json:"status,omitempty"`
	Conns  []Conn  `json:"conns,omitempty"`
}

// command is a validated request.
type command struct {
	cmd         string
	vip, member netip.Addr
	weight      uint32
}

// decodeRequest parses and validates one request. It is strict (unknown fields, trailing data and
// fields a command does not take are errors) so that a typo in a hand-written request is reported
// rather than silently ignored.
func decodeRequest(b []byte) (command, error) {
	if len(b) > MaxRequestSize {
		return command{}, ErrRequestTooLarge
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var r request
	if err := dec.Decode(&r); err != nil {
		return command{}, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return command{}, fmt.Errorf("%w: data after the request object", ErrBadRequest)
	}
	c := command{cmd: r.Cmd}
	var err error
	switch r.Cmd {
	case cmdStatus, cmdReload:
		if r.VIP != "" || r.Member != "" || r.Weight != nil {
			return command{}, fmt.Errorf("%w: %q takes no arguments", ErrBadRequest, r.Cmd)
		}
	case cmdConns:
		if r.Weight != nil {
			return command{}, fmt.Errorf("%w: %q takes no weight", ErrBadRequest, r.Cmd)
		}
		if c.vip, err = optionalAddr("vip", r.VIP); err != nil {
			return command{}, err
		}
		if c.member, err = optionalAddr("member", r.Member); err != nil {
			return command{}, err
		}
	case "":
		return command{}, fmt.Errorf("%w: no cmd", ErrBadRequest)
	case cmdWeight:
		if r.VIP != "" {
			return command{}, fmt.Errorf("%w: %q takes no vip", ErrBadRequest, r.Cmd)
		}
		if r.Member == "" || r.Weight == nil {
			return command{}, fmt.Errorf("%w: %q needs a member and a weight", ErrBadRequest, r.Cmd)
		}
		if c.member, err = optionalAddr("member", r.Member); err != nil {
			return command{}, err
		}
		c.weight = *r.Weight
	default:
		return command{}, fmt.Errorf("%w %q", ErrUnknownCommand, r.Cmd)
	}
	return c, nil
}

// optionalAddr parses an address field; an empty field is the zero Addr (no filter).
func optionalAddr(field, s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%w: %s: %w", ErrBadRequest, field, err)
	}
	// Members and VIPs are compared as plain addresses; an IPv4-mapped IPv6 form or a zone would
	// never match and would make a filter silently empty.
	return a.Unmap().WithZone(""), nil
}

// encode is the wire form of a request, terminated by a newline.
func (r request) encode() []byte {
	b, err := json.Marshal(r)
	if err != nil {
		// A struct of strings and an integer always marshals.
		panic(err)
	}
	return append(b, '\n')
}
