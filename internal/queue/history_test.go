package queue

import (
	"testing"
	"time"
)

func TestHistoryKeepsTheNewestInOrder(t *testing.T) {
	t.Parallel()
	h := NewHistory(3)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if got := h.Since(t0); len(got) != 0 {
		t.Fatalf("Since on an empty history = %v, want none", got)
	}
	for i := range 5 {
		h.Add(Sample{At: t0.Add(time.Duration(i) * time.Minute), Counts: map[State]int{Pending: i}})
	}
	got := h.Since(t0)
	if len(got) != 3 {
		t.Fatalf("Since = %d samples, want the newest 3", len(got))
	}
	for i, s := range got {
		if s.Counts[Pending] != i+2 {
			t.Fatalf("sample %d has pending %d, want %d (oldest first)", i, s.Counts[Pending], i+2)
		}
	}
	if got := h.Since(t0.Add(4 * time.Minute)); len(got) != 1 || got[0].Counts[Pending] != 4 {
		t.Fatalf("Since the last sample's time = %v, want that sample only", got)
	}
}
