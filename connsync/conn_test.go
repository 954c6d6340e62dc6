package connsync

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

// loopConn returns a Conn that sends from one UDP socket on 127.0.0.1 to
// another, the receiver, with which the test reads what was sent. It needs
// no namespace: Conn's send path is the same whatever the destination.
func loopConn(t testing.TB, key []byte) (*Conn, *net.UDPConn) {
	t.Helper()
	lo := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	rx, err := net.ListenUDP("udp4", lo)
	if err != nil {
		t.Skipf("no UDP on 127.0.0.1: %v", err)
	}
	tx, err := net.ListenUDP("udp4", lo)
	if err != nil {
		rx.Close()
		t.Skipf("no UDP on 127.0.0.1: %v", err)
	}
	t.Cleanup(func() { tx.Close(); rx.Close() })
	c := &Conn{
		uc:      tx,
		key:     key,
		local:   testSender,
		dests:   []netip.AddrPort{rx.LocalAddr().(*net.UDPAddr).AddrPort()},
		log:     slog.New(slog.DiscardHandler),
		sendBuf: make([]byte, 0, MaxMessage),
		sendMAC: newMAC(key),
	}
	return c, rx
}

// datagrams reads what arrives at rx until nothing has come for a while.
func datagrams(t testing.TB, rx *net.UDPConn) [][]byte {
	t.Helper()
	var out [][]byte
	buf := make([]byte, readBuffer)
	for {
		rx.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := rx.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return out
			}
			t.Fatal(err)
		}
		out = append(out, append([]byte(nil), buf[:n]...))
	}
}

// decoded is one received message: its version and records.
type decoded struct {
	version int
	recs    []Record
}

func decodeAll(t testing.TB, msgs [][]byte, key []byte) []decoded {
	t.Helper()
	var out []decoded
	for i, b := range msgs {
		h, recs, err := Decode(b, key, 0, nil)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if h.Sender != testSender {
			t.Fatalf("datagram %d: sender %v", i, h.Sender)
		}
		out = append(out, decoded{int(b[4]), recs})
	}
	return out
}

func TestSendSplitsByVersion(t *testing.T) {
	for _, key := range [][]byte{nil, testKey} {
		c, rx := loopConn(t, key)
		v4, v6 := manyRecords(MaxRecordsV1+4), manyRecords6(MaxRecordsV2+8)
		if err := c.Send(interleave(v4, v6)); err != nil {
			t.Fatal(err)
		}
		got := decodeAll(t, datagrams(t, rx), key)
		// Full messages first, then the rest; version 1 before version 2.
		var sizes []int
		var got4, got6 []Record
		for _, m := range got {
			sizes = append(sizes, m.version*1000+len(m.recs))
			for i := range m.recs {
				if v := recordVersion(&m.recs[i]); v != m.version {
					t.Fatalf("version %d message carries a version %d record", m.version, v)
				}
			}
			if m.version == Version1 {
				// What a node that speaks only version 1 decodes.
				got4 = append(got4, m.recs...)
			} else {
				got6 = append(got6, m.recs...)
			}
		}
		if want := []int{1000 + MaxRecordsV1, 1004, 2000 + MaxRecordsV2, 2008}; !reflect.DeepEqual(sizes, want) {
			t.Errorf("messages (version*1000+records) %v, want %v", sizes, want)
		}
		if !reflect.DeepEqual(got4, v4) || !reflect.DeepEqual(got6, v6) {
			t.Errorf("records differ: %d IPv4 of %d, %d IPv6 of %d, or out of order", len(got4), len(v4), len(got6), len(v6))
		}
		if st := c.Stats(); st.SentMessages != 4 || st.SentRecords != uint64(len(v4)+len(v6)) {
			t.Errorf("stats %+v", st)
		}
	}
}

func TestSendSkipsInvalidRecords(t *testing.T) {
	c, rx := loopConn(t, nil)
	bad := everyKind()[0]
	bad.Member = addr("fe80::1")
	recs := []Record{everyKind()[0], bad, everyKind6()[0], {}, everyKind()[1]}
	err := c.Send(recs)
	if !errors.Is(err, ErrRecord) || !strings.Contains(err.Error(), "2 of 5 records not sent, the first at index 1") {
		t.Fatalf("Send: %v, want ErrRecord naming 2 of 5 records from index 1", err)
	}
	got := decodeAll(t, datagrams(t, rx), nil)
	if len(got) != 2 || !reflect.DeepEqual(got[0].recs, []Record{recs[0], recs[4]}) || !reflect.DeepEqual(got[1].recs, recs[2:3]) {
		t.Fatalf("sent %+v", got)
	}
	// Nothing valid at all: nothing is sent.
	if err := c.Send([]Record{bad}); !errors.Is(err, ErrRecord) {
		t.Fatalf("Send of one invalid record: %v", err)
	}
	if err := c.Send(nil); err != nil {
		t.Fatalf("Send(nil): %v", err)
	}
	if n := len(datagrams(t, rx)); n != 0 {
		t.Fatalf("%d datagrams for no valid record", n)
	}
}

// Send allocates nothing, with a key too, however it splits a batch.
func TestSendAllocs(t *testing.T) {
	for _, key := range [][]byte{nil, testKey} {
		c, _ := loopConn(t, key)
		recs := interleave(manyRecords(2*MaxRecordsV1), manyRecords6(2*MaxRecordsV2+1))
		if n := testing.AllocsPerRun(50, func() {
			if err := c.Send(recs); err != nil {
				t.Fatal(err)
			}
		}); n != 0 {
			t.Errorf("Send (key %v) allocates %v times", key != nil, n)
		}
	}
}

func BenchmarkSend(b *testing.B) {
	for _, bc := range []struct {
		name string
		recs []Record
	}{
		{"v1", manyRecords(MaxRecordsV1)},
		{"v2", manyRecords6(MaxRecordsV2)},
		{"mixed", interleave(manyRecords(MaxRecordsV1), manyRecords6(MaxRecordsV2))},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c, _ := loopConn(b, testKey)
			b.ReportAllocs()
			for b.Loop() {
				if err := c.Send(bc.recs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
