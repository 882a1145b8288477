package realtime_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestInvalidClientFieldsClose: a packet whose fields are not what the
// protocol allows closes the connection instead of being used or echoed.
// Before the checks, a 60 KiB namespace came back in the CONNECT_ERROR
// (1,024 queued replies of a client that does not read hold 60 MiB), a
// namespace holding \x1e injected a packet into a polling reply, and
// invalid UTF-8 was decoded and echoed.
func TestInvalidClientFieldsClose(t *testing.T) {
	t.Parallel()
	ts := startServer(t, "", nil)
	w := wire{t, ts}
	for name, frame := range map[string]string{
		"long namespace":         "40/" + strings.Repeat("a", 60<<10) + ",{}",
		"namespace with \\x1e":   "40/x\x1e42[\"asset_processed\"],{}",
		"invalid UTF-8 name":     "421[\"\xff\"]",
		"invalid UTF-8 data":     "42[\"e\",\"\xc3\x28\"]",
		"CONNECT with an array":  `40["token"]`,
		"very long event name":   `421["` + strings.Repeat("e", 10<<10) + `"]`,
		"DISCONNECT with data":   `41{"x":1}`,
		"ACK that is no array":   `431{}`,
		"engine.io open from us": `0{}`,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := w.connectWS(validToken("u1"))
			c.SetReadLimit(1 << 20) // so that an echo is read, not refused here
			// Invalid UTF-8 in a text frame is written as such: the
			// websocket library does not check it either.
			if err := c.Write(context.Background(), websocket.MessageText, []byte(frame)); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			for {
				_, b, err := c.Read(ctx)
				if err == nil {
					if s := string(b); s != "2" { // a ping may come first
						t.Fatalf("the server answered %.80q…, want the connection closed", s)
					}
					continue
				}
				if errors.Is(err, context.DeadlineExceeded) {
					t.Fatal("the connection is still open")
				}
				return
			}
		})
	}
}
