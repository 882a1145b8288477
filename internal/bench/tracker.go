package bench

import (
	"sync"
	"time"
)

// upload is one request's outcome: the assets of a 202, or a failure.
type upload struct {
	user       int // index into the run's users
	start, end time.Time
	status     int    // 0: no response
	err        string // transport error, or a 202 with an unreadable body
	body       string // first bytes of a non-202 body
	assetIDs   []string
}

// receipt is one asset_processed event as a socket received it.
type receipt struct {
	socket int // the user index of the socket that received it
	ev     Event
	at     time.Time
}

// tracker collects uploads and receipts from many goroutines and tells the
// waiter when every acknowledged asset has reached its owner's socket.
// Events can arrive before their upload's 202 has been read, so a match is
// counted from whichever side comes second.
type tracker struct {
	mu       sync.Mutex
	uploads  []upload
	receipts []receipt
	owner    map[string]int   // assetId → user, for acknowledged assets
	early    map[string][]int // assetId → sockets that got its event before the 202
	matched  map[string]bool  // acknowledged assets their owner's socket received
	changed  chan struct{}    // a send (non-blocking) after each new match
}

func newTracker() *tracker {
	return &tracker{
		owner:   map[string]int{},
		early:   map[string][]int{},
		matched: map[string]bool{},
		changed: make(chan struct{}, 1),
	}
}

func (t *tracker) addUpload(u upload) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.uploads = append(t.uploads, u)
	for _, id := range u.assetIDs {
		t.owner[id] = u.user
		for _, s := range t.early[id] {
			t.match(id, s)
		}
		delete(t.early, id)
	}
}

func (t *tracker) addReceipt(r receipt) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.receipts = append(t.receipts, r)
	if _, ok := t.owner[r.ev.AssetID]; ok {
		t.match(r.ev.AssetID, r.socket)
	} else {
		t.early[r.ev.AssetID] = append(t.early[r.ev.AssetID], r.socket)
	}
}

// match records that socket received asset id's event; t.mu is held.
func (t *tracker) match(id string, socket int) {
	if t.owner[id] != socket || t.matched[id] {
		return
	}
	t.matched[id] = true
	select {
	case t.changed <- struct{}{}:
	default:
	}
}

// pending is how many acknowledged assets have no event at their owner yet.
func (t *tracker) pending() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.owner) - len(t.matched)
}

// waitAll waits until no acknowledged asset is pending, or until timeout or
// done; it reports whether none is pending.
func (t *tracker) waitAll(timeout time.Duration, done <-chan struct{}) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for t.pending() > 0 {
		select {
		case <-t.changed:
		case <-deadline.C:
			return t.pending() == 0
		case <-done:
			return t.pending() == 0
		}
	}
	return true
}

// snapshot returns copies of what was collected.
func (t *tracker) snapshot() ([]upload, []receipt) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]upload(nil), t.uploads...), append([]receipt(nil), t.receipts...)
}
