package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"
)

// ErrDrainTimeout means a drained member still had flows or persistence templates when the
// timeout expired.
var ErrDrainTimeout = errors.New("control: drain timed out")

// RemoteError is an error the server answered with, e.g. a reload's "vipaddrs:3: Incorrect mask".
type RemoteError struct {
	// Message is the server's error text.
	Message string
}

// Error returns the server's error text unchanged, so that a file:line from a reload reaches the
// operator as it is.
func (e *RemoteError) Error() string { return e.Message }

// Client talks to the control socket of a running l2lb. Each call is one connection, so a Client
// is safe for concurrent use and survives a restart of the balancer.
type Client struct {
	path string
	// Timeout bounds one request, from connecting to reading the whole answer.
	Timeout time.Duration
	// pollInterval is how often Drain looks at the member's counters.
	pollInterval time.Duration
}

// Dial returns a client for the control socket at path. It does not connect: every request does.
func Dial(path string) *Client {
	return &Client{path: path, Timeout: 2 * time.Minute, pollInterval: 500 * time.Millisecond}
}

// do sends one request and reads the answer.
func (c *Client) do(req request) (response, error) {
	conn, err := net.DialTimeout("unix", c.path, c.Timeout)
	if err != nil {
		return response{}, fmt.Errorf("control: is l2lb running? %w", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(c.Timeout))
	if _, err := conn.Write(req.encode()); err != nil {
		return response{}, fmt.Errorf("control: sending request: %w", err)
	}
	var resp response
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		return response{}, fmt.Errorf("control: reading answer: %w", err)
	}
	if resp.Error != "" {
		return response{}, &RemoteError{Message: resp.Error}
	}
	if !resp.OK {
		return response{}, fmt.Errorf("control: answer is neither ok nor an error")
	}
	return resp, nil
}

// Status returns the balancer's status.
func (c *Client) Status() (Status, error) {
	resp, err := c.do(request{Cmd: cmdStatus})
	if err != nil {
		return Status{}, err
	}
	if resp.Status == nil {
		return Status{}, fmt.Errorf("control: status answer without status")
	}
	return *resp.Status, nil
}

// Conns returns the connection table filtered by VIP and member; a zero Addr does not filter.
func (c *Client) Conns(vip, member netip.Addr) ([]Conn, error) {
	req := request{Cmd: cmdConns}
	if vip.IsValid() {
		req.VIP = vip.String()
	}
	if member.IsValid() {
		req.Member = member.String()
	}
	resp, err := c.do(req)
	if err != nil {
		return nil, err
	}
	return resp.Conns, nil
}

// SetWeight sets a member's weight; zero makes it quiescent: no new connections, existing flows and
// persistence templates keep going to it.
func (c *Client) SetWeight(member netip.Addr, weight uint32) error {
	_, err := c.do(request{Cmd: cmdWeight, Member: member.String(), Weight: &weight})
	return err
}

// Reload asks the balancer to re-read its VIP file and configuration; the error of a bad file
// names file:line and the running configuration stays.
func (c *Client) Reload() error {
	_, err := c.do(request{Cmd: cmdReload})
	return err
}

// Drain sets the member's weight to zero. With wait it then polls the status until the member has
// neither flows nor persistence templates left, calling progress (if not nil) with the counts at
// every poll, and returns ErrDrainTimeout if timeout (zero or negative: no limit) passes first.
// A member that disappears from the status has nothing left to drain.
func (c *Client) Drain(member netip.Addr, wait bool, timeout time.Duration, progress func(flows, templates int64)) error {
	if err := c.SetWeight(member, 0); err != nil {
		return err
	}
	if !wait {
		return nil
	}
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	for {
		s, err := c.Status()
		if err != nil {
			return err
		}
		m, ok := s.FindMember(member)
		if !ok {
			return nil
		}
		if progress != nil {
			progress(m.Flows, m.Templates)
		}
		if m.Flows == 0 && m.Templates == 0 {
			return nil
		}
		pause := c.pollInterval
		if !deadline.IsZero() {
			left := time.Until(deadline)
			if left <= 0 {
				return fmt.Errorf("%w: %s still has %d flows and %d templates", ErrDrainTimeout, member, m.Flows, m.Templates)
			}
			// The last look is at the deadline itself, not one interval before it.
			pause = min(pause, left)
		}
		time.Sleep(pause)
	}
}

// WaitReady polls the balancer's status until it reports Ready (its fast path runs) and
// returns that status. It is the one way tests, the demo and the bench wait for a balancer they
// started: no log text is parsed. It gives up when ctx ends, with the last error seen.
func (c *Client) WaitReady(ctx context.Context) (Status, error) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	var last error
	for {
		st, err := c.Status()
		if err == nil && st.Ready {
			return st, nil
		}
		if err == nil {
			last = fmt.Errorf("control: not ready: %s", strings.Join(st.Problems, "; "))
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return Status{}, fmt.Errorf("%w: %w", ctx.Err(), last)
		case <-t.C:
		}
	}
}
