package httpapi

import (
	"testing"
	"time"
)

func TestUserLimiter(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_700_000_000, 0)
	l := NewUserLimiter(60, 3, func() time.Time { return now })
	for i := range 3 {
		if ok, _ := l.Allow("alice"); !ok {
			t.Fatalf("request %d of the burst refused", i)
		}
	}
	ok, wait := l.Allow("alice")
	if ok || wait <= 0 || wait > time.Second {
		t.Fatalf("4th request: ok=%v wait=%v; want refused with a wait of at most 1s", ok, wait)
	}
	if ok, _ := l.Allow("bob"); !ok {
		t.Fatal("bob is limited by alice's requests")
	}
	now = now.Add(time.Second)
	if ok, _ := l.Allow("alice"); !ok {
		t.Fatal("a token did not come back after a second")
	}
	// Idle buckets are dropped.
	now = now.Add(time.Hour)
	l.Allow("carol")
	if _, kept := l.users["alice"]; kept {
		t.Fatal("an idle bucket was kept")
	}
}
