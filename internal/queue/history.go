package queue

import (
	"sync"
	"time"
)

// Sample is the queue's job counts by state at one moment.
type Sample struct {
	At     time.Time
	Counts map[State]int
}

// History keeps the latest samples of the queue's counts in a ring (the
// console's chart of the last hour). It is safe for concurrent use.
type History struct {
	mu   sync.Mutex
	ring []Sample
	next int // where the next sample goes
	full bool
}

// NewHistory keeps up to n samples (n ≥ 1).
func NewHistory(n int) *History { return &History{ring: make([]Sample, max(n, 1))} }

// Add records s, dropping the oldest sample when the ring is full.
func (h *History) Add(s Sample) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ring[h.next] = s
	h.next = (h.next + 1) % len(h.ring)
	if h.next == 0 {
		h.full = true
	}
}

// Since returns the samples taken at or after t, oldest first.
func (h *History) Since(t time.Time) []Sample {
	h.mu.Lock()
	defer h.mu.Unlock()
	var all []Sample
	if h.full {
		all = append(all, h.ring[h.next:]...)
	}
	all = append(all, h.ring[:h.next]...)
	out := []Sample{}
	for _, s := range all {
		if !s.At.Before(t) {
			out = append(out, s)
		}
	}
	return out
}
