package afxdp

import "testing"

// Exports for the external tests of this directory (node_test.go), which drive the dataplane's
// OpenXDP and so cannot live in package afxdp (the dataplane imports it).

// TestNS is the veth namespace of the tests; its Run method is the embedded nstest.NS.Run.
type TestNS = vethNS

// NewTestNS is newVethNS.
func NewTestNS(t testing.TB, queues int) *TestNS { return newVethNS(t, queues) }

// RawSocket is rawSocket.
func RawSocket(ifindex int) (int, error) { return rawSocket(ifindex) }
