package asset

import (
	"errors"
	"testing"
)

func TestCursorRoundTrip(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		ms int64
		id string
	}{{0, "a"}, {1741944413123, "01JP7X9Z"}, {-62135596800000, "x/y+z=é"}} {
		ms, id, err := DecodeCursor(EncodeCursor(tc.ms, tc.id))
		if err != nil || ms != tc.ms || id != tc.id {
			t.Errorf("decode(encode(%d, %q)) = %d, %q, %v", tc.ms, tc.id, ms, id, err)
		}
	}
	for _, bad := range []string{"", "!!", "AQ", EncodeCursor(1, "a")[:10]} {
		if _, _, err := DecodeCursor(bad); !errors.Is(err, ErrInvalidCursor) {
			t.Errorf("DecodeCursor(%q) = %v, want ErrInvalidCursor", bad, err)
		}
	}
}

// TestCursorFormat: clients hold cursors across releases, so the encoding
// must not change without a new cursorVersion.
func TestCursorFormat(t *testing.T) {
	t.Parallel()
	const want = "AQAAAZWT-lvDMDFKUDdYOVo"
	if got := EncodeCursor(1741944413123, "01JP7X9Z"); got != want {
		t.Fatalf("EncodeCursor = %q, want %q", got, want)
	}
}
