package blob

import (
	"sync"
	"testing"
	"time"
)

// TestDirSyncCoalesces: a caller that arrives while an fsync runs waits for
// the next one (the running one may have begun before its entry was made),
// and callers waiting together share that next fsync.
func TestDirSyncCoalesces(t *testing.T) {
	t.Parallel()
	var (
		mu      sync.Mutex
		fsyncs  int
		release = make(chan struct{})
		began   = make(chan struct{}, 10)
	)
	s := &dirSync{fsync: func() error {
		mu.Lock()
		fsyncs++
		mu.Unlock()
		began <- struct{}{}
		select {
		case <-release:
		case <-time.After(10 * time.Second):
			t.Error("fsync never released")
		}
		return nil
	}}
	s.cond = sync.NewCond(&s.mu)

	first := make(chan error, 1)
	go func() { first <- s.sync() }()
	wait(t, began)

	// Three callers arrive while the first fsync runs.
	const late = 3
	lateDone := make(chan error, late)
	for range late {
		go func() { lateDone <- s.sync() }()
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		s.mu.Lock()
		n := s.waiting
		s.mu.Unlock()
		if n == late {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d callers waiting after 10 s", n, late)
		}
	}
	release <- struct{}{}
	if err := waitErr(t, first); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lateDone:
		t.Fatal("a caller that arrived during an fsync returned when that fsync finished")
	case <-time.After(100 * time.Millisecond):
	}
	wait(t, began) // the second fsync, for all three
	release <- struct{}{}
	for range late {
		if err := waitErr(t, lateDone); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if fsyncs != 2 {
		t.Fatalf("%d fsyncs for 1 + %d callers, want 2", fsyncs, late)
	}
}

func wait(t *testing.T, c <-chan struct{}) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(10 * time.Second):
		t.Fatal("timed out")
	}
}

func waitErr(t *testing.T, c <-chan error) error {
	t.Helper()
	select {
	case err := <-c:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("timed out")
		return nil
	}
}
